"""Gradient-communication hooks (in the spirit of PyTorch DDP comm hooks) and the default allreduce hook.

A hook is ``hook(state, bucket) -> result`` where ``result`` is either the reduced array (the same length as
``bucket.buffer``; returning ``bucket.buffer`` itself after reducing in place is cheapest) or a *pending* object
with ``wait() -> array`` (and optionally ``progress() -> bool``), for nonblocking hooks.

*Reduced* means the **sum over the contributing ranks** of ``bucket.buffer``: each rank's buffer already holds its
share of the mean (its rows' gradient sum divided by the global batch's row count), so the sum is the averaged
gradient; nothing needs dividing by ``p`` (fp16 payloads cannot overflow where the gradients do not).

``state`` is any object; the trainer calls ``state.state_dict()`` (a flat dict of NumPy arrays / ints / floats /
strings) when it writes a checkpoint and ``state.load_state_dict(d)`` on resume, when the state has them.
Per-rank state (error-feedback memory) is saved per rank and restored when the rank count matches.
``state.comm`` should be the trainer's counting communicator (:class:`~ring_allreduce.train.transport.CountingComm`,
a wire of the communicator's one transport) so that ``bytes_sent`` counts what the hook puts on the wire.
"""
from __future__ import annotations

import numpy as np

from .. import algorithms, kernels
from .._registry import generation as _generation
from ..algorithms import auto


class Bucket:
    """A contiguous slice ``[start, stop)`` of the flat gradient storage holding whole parameters.

    ``buffer`` is the view hooks reduce (no copy); ``names`` the parameters in it (backward order); ``index`` its
    position in the launch order (bucket 0 holds the last layer and is ready first).
    """

    __slots__ = ("index", "start", "stop", "names", "buffer")

    def __init__(self, index, start, stop, names, buffer):
        self.index, self.start, self.stop, self.names, self.buffer = index, start, stop, names, buffer

    def __repr__(self) -> str:
        return f"Bucket({self.index}, [{self.start}:{self.stop}], {self.names})"


def reduce_sum(comm, buf, algorithm: str = "auto", kernel=None) -> None:
    """Sum ``buf`` (1-D, C-contiguous; device arrays are staged through the host) over ``comm`` in place.

    No argument agreement here: the trainer agrees on the model and bucket layout once, at start. ``auto`` takes
    the table's flat pick (no node-aware routing, which would need a collective per call). ``comm`` is normally
    the trainer's counting :class:`~ring_allreduce.transport.Wire`: the resolved algorithm is cached on it and
    sends through it (so it counts); anything else goes through the one-shot :func:`ring_allreduce.allreduce`
    with the check off. The kernel defaults to the NumPy reference (``kernel``: a name or a kernel object).
    """
    if buf.size == 0 or comm.Get_size() == 1:
        return
    cache = getattr(comm, "sums", None)
    if cache is not None and isinstance(buf, np.ndarray) and comm.transport is not None:
        key = (buf.size, buf.dtype, algorithm, kernel, _generation[0])
        hit = cache.get(key)
        if hit is None:
            name = auto.resolve(buf.nbytes, comm.Get_size(), buf.dtype, "sum") if algorithm == "auto" else algorithm
            k = kernels.get(kernel or "numpy") if kernel is None or isinstance(kernel, str) else kernel
            target = comm.transport.user if name in ("shm", "hierarchical") else comm
            if len(cache) > 1024:
                cache.clear()
            hit = cache[key] = (algorithms.get(name), target, k)
        fn, target, k = hit
        fn(target, buf, buf, "sum", k, None)
        return
    from ..api import allreduce

    name = auto.resolve(buf.nbytes, comm.Get_size(), buf.dtype, "sum") if algorithm == "auto" else algorithm
    kname = "numpy" if kernel is None else (kernel if isinstance(kernel, str) else kernel.name)
    if not isinstance(buf, np.ndarray):
        kname = None  # the device array's default kernel (staging reduces on the host with NumPy's)
    allreduce(buf, comm, op="sum", algorithm=name, out=buf, check=False, kernel=kname)


class AllreduceState:
    """State of the default hook: the (counting) communicator, the algorithm name, blocking or not.

    ``plans``: one persistent plan per bucket for the nonblocking mode, created when the bucket is first launched
    (every rank launches buckets in the same order, so the plans' agreement collectives match).
    """

    __slots__ = ("comm", "algorithm", "nonblocking", "kernel", "plans")

    def __init__(self, comm, algorithm: str = "auto", nonblocking: bool = False):
        if algorithm != "auto":
            algorithms.get(algorithm)  # unknown names fail here, listing the valid ones
        self.comm, self.algorithm, self.nonblocking = comm, algorithm, nonblocking
        self.kernel = "numpy"
        self.plans = {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, d: dict) -> None:
        pass

    def plan(self, bucket: Bucket):
        """The bucket's nonblocking plan (sum in place), made on first use."""
        pl = self.plans.get(bucket.index)
        if pl is None or pl.x is not bucket.buffer:
            from ..plan import Plan

            buf = bucket.buffer
            name = self.algorithm
            if name == "auto":
                name = auto.resolve(buf.nbytes, self.comm.Get_size(), buf.dtype, "sum")
            pl = self.plans[bucket.index] = Plan(buf, self.comm, "sum", name, buf, self.kernel)
        return pl


def allreduce_hook(state: AllreduceState, bucket: Bucket):
    """Default hook: sum the bucket over all ranks in place.

    Blocking: with ``state.algorithm``. Nonblocking: the bucket's persistent plan, started here and progressed by
    the exchange (``progress()`` between layers, ``wait()`` at the end): the same step sequence as the blocking
    algorithm, so the bytes are identical to it and across ranks.
    """
    buf = bucket.buffer
    if state.nonblocking and state.comm.Get_size() > 1 and buf.size and isinstance(buf, np.ndarray):
        return state.plan(bucket).start()
    reduce_sum(state.comm, bucket.buffer, state.algorithm, state.kernel)
    return bucket.buffer
