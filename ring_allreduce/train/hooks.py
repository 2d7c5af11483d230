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
``state.comm`` should be the trainer's counting communicator (:class:`~ring_allreduce.train.transport.CountingComm`)
so that ``bytes_sent`` counts what the hook puts on the wire.
"""
from __future__ import annotations

import numpy as np

from .. import algorithms, backends, kernels, schedules
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

    Calls the registered algorithm directly, so ``comm`` may be a :class:`CountingComm`; no argument agreement is
    done here (the trainer agrees on the model and bucket layout once, at start).
    """
    p = comm.Get_size()
    if p == 1 or buf.size == 0:
        return
    if not isinstance(buf, np.ndarray):  # a device bucket: through host memory (to_host waits for the stream)
        host = np.array(backends.to_host(buf), copy=True)
        reduce_sum(comm, host, algorithm, kernel)
        backends.from_host(host, buf)
        return
    name = auto.select(buf.nbytes, p, buf.dtype) if algorithm == "auto" else algorithm
    algorithms.get(name)(comm, buf, buf, "sum", kernel or kernels.get("numpy"), None)


class AllreduceState:
    """State of the default hook: the (counting) communicator, the algorithm name, blocking or not."""

    __slots__ = ("comm", "algorithm", "nonblocking", "kernel")

    def __init__(self, comm, algorithm: str = "auto", nonblocking: bool = False):
        if algorithm != "auto":
            algorithms.get(algorithm)  # unknown names fail here, listing the valid ones
        self.comm, self.algorithm, self.nonblocking = comm, algorithm, nonblocking
        self.kernel = kernels.get("numpy")

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, d: dict) -> None:
        pass


def allreduce_hook(state: AllreduceState, bucket: Bucket):
    """Default hook: sum the bucket over all ranks in place.

    Blocking: with ``state.algorithm``. Nonblocking: ``MPI_Iallreduce`` when the algorithm is ``"mpi"`` (or
    ``"auto"`` picks it for this bucket's size), otherwise the hand-written :class:`NonblockingRing` (the only
    hand-written algorithm with a nonblocking form).
    """
    buf = bucket.buffer
    if state.nonblocking and state.comm.Get_size() > 1 and buf.size and isinstance(buf, np.ndarray):
        name = state.algorithm
        if name == "auto":
            name = auto.select(buf.nbytes, state.comm.Get_size(), buf.dtype)
        if name == "mpi":
            return _MpiRequest(state.comm, bucket.buffer)
        return NonblockingRing(state.comm, bucket.buffer, tag=_TAG_BASE + bucket.index)
    reduce_sum(state.comm, bucket.buffer, state.algorithm, state.kernel)
    return bucket.buffer


class _MpiRequest:
    """``MPI_Iallreduce`` (sum, in place) as a pending hook result."""

    def __init__(self, comm, buf):
        from mpi4py import MPI

        self.buf = buf
        self.req = comm.Iallreduce(MPI.IN_PLACE, buf, MPI.SUM)

    def progress(self) -> bool:
        return self.req.Test()

    def wait(self):
        self.req.Wait()
        return self.buf


_TAG_BASE = 0x5300  # one tag per bucket: several nonblocking rings to the same neighbour must not mix


class NonblockingRing:
    """A ring allreduce (sum, in place) driven by ``progress()`` calls; each call advances as far as it can.

    Same schedule and reduction order as the blocking ``ring`` algorithm, so the bytes are identical to it and
    across ranks. Used by the ``nonblocking`` overlap mode: backward calls ``progress()`` between layers.
    """

    def __init__(self, comm, buf, tag: int):
        p, r = comm.Get_size(), comm.Get_rank()
        self.comm, self.buf, self.tag = comm, buf, tag
        self.steps = [(s, True) for s in schedules.ring_reduce_scatter(r, p, buf.size)]
        self.steps += [(s, False) for s in schedules.ring_allgather(r, p, buf.size)]
        self.k = 0
        self.tmp = np.empty(max(b - a for (_, _, _, (a, b)), _ in self.steps), dtype=buf.dtype)
        self.reqs = None
        self._post()

    def _post(self) -> None:
        from mpi4py import MPI

        (dest, (s0, s1), source, (c0, c1)), reduce_ = self.steps[self.k]
        rbuf = self.tmp[: c1 - c0] if reduce_ else self.buf[c0:c1]
        self.reqs = [self.comm.Irecv([rbuf, MPI.BYTE], source, self.tag),
                     self.comm.Isend([self.buf[s0:s1], MPI.BYTE], dest, self.tag)]

    def _complete_step(self) -> None:
        (_, _, _, (c0, c1)), reduce_ = self.steps[self.k]
        if reduce_:
            np.add(self.tmp[: c1 - c0], self.buf[c0:c1], out=self.buf[c0:c1])
        self.k += 1
        if self.k < len(self.steps):
            self._post()

    def progress(self) -> bool:
        """Advance without blocking; True when the allreduce is complete."""
        from mpi4py import MPI

        while self.k < len(self.steps) and MPI.Request.Testall(self.reqs):
            self._complete_step()
        return self.k >= len(self.steps)

    def wait(self):
        from mpi4py import MPI

        while self.k < len(self.steps):
            MPI.Request.Waitall(self.reqs)
            self._complete_step()
        return self.buf
