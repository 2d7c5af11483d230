"""Bucketed, overlapped gradient reduction for any array library: :class:`GradientBuckets`.

Each bucket is one contiguous array (of the parameters' dtype, from ``alloc``) holding whole parameters. Without
compression it owns a persistent allreduce plan (:func:`ring_allreduce.allreduce_init`, in place), started as soon
as every gradient in it is ready and every earlier bucket has started: all ranks start plans in the same (index)
order, as MPI requires, whatever order their gradients arrive in. Started plans are progressed on each later
``grad_ready`` and completed by ``wait()``. With compression a bucket goes through the compression state
(compressor + error feedback, :mod:`ring_allreduce.compression`) when it starts, blocking.
"""
from __future__ import annotations

import time
from typing import Callable, Optional, Sequence

import numpy as np

from ..errors import ArgumentError
from ..ops import normalize_op
from .layout import Layout, agree

DEFAULT_BUCKET_MB = 1.0


class _Bucket:
    __slots__ = ("index", "first", "stop", "flat", "plan", "remaining", "started", "t0", "t1", "early", "shapes")

    def __init__(self, index, first, stop, flat, shapes):
        self.index, self.first, self.stop, self.flat, self.shapes = index, first, stop, flat, shapes
        self.plan = None
        self.remaining = stop - first
        self.started = False
        self.t0 = self.t1 = None
        self.early = False


class GradientBuckets:
    """Reduce parameter gradients across ranks in buckets, overlapped with whoever produces them (collective).

    Args:
        specs: ``(name, shape, dtype)`` per parameter, in the order backward is expected to produce the gradients
            (usually the reverse of the model's parameter order); must agree across ranks.
        comm: an mpi4py intracommunicator (None: ``COMM_WORLD``).
        op: ``"avg"`` (default) or ``"sum"`` (or ``min``/``max``/``prod`` without compression).
        algorithm: a registered allreduce algorithm or ``"auto"``.
        bucket_mb: bucket size in MiB (a bucket closes once it holds at least this much; <= 0: one bucket).
        compression: a compressor name (``fp16``, ``topk``, ``powersgd``, ...; see
            :mod:`ring_allreduce.compression`) or None; ``compression_options`` go to its
            :class:`~ring_allreduce.compression.CompressionState` (``ratio``, ``error_feedback``, ...).
        alloc: ``alloc(n, dtype) -> 1-D array`` for the bucket storage (default :func:`numpy.empty`; ``cupy.empty``
            for CuPy gradients).
        settings, problems: a wrapper's own settings that must agree (a dict of plain values) and its own invalid
            arguments (strings), checked in the same collective, so one rank's bad argument cannot leave the
            others waiting.

    Every setting and the layout are agreed at construction: a difference or a rank's invalid argument raises the
    same error on every rank. ``spans`` holds, after ``wait()``, ``(bucket, t_start, t_done, started_early)``
    with ``time.perf_counter`` times; ``started_early`` means started by ``grad_ready`` (before ``wait``).
    """

    def __init__(self, specs: Sequence, comm=None, *, op: str = "avg", algorithm: str = "auto",
                 bucket_mb: float = DEFAULT_BUCKET_MB, compression: Optional[str] = None,
                 compression_options: Optional[dict] = None, alloc: Optional[Callable] = None, kernel=None,
                 settings: Optional[dict] = None, problems=None):
        if comm is None:
            from mpi4py import MPI

            comm = MPI.COMM_WORLD
        self.comm = comm
        problems = list(problems or [])
        try:
            op = normalize_op(op)
        except (ValueError, TypeError) as e:
            problems.append(str(e))
        if not isinstance(bucket_mb, (int, float)) or bucket_mb != bucket_mb:
            problems.append(f"bucket_mb must be a number, got {bucket_mb!r}")
            bucket_mb = 0
        layout = Layout(specs, bucket_mb)
        if compression is not None:
            bad = sorted({d.name for d in layout.dtypes if d.kind != "f"})
            if op not in ("avg", "sum"):
                problems.append(f"compression needs op 'avg' or 'sum', got {op!r}")
            if bad:
                problems.append(f"compression needs floating-point gradients, got {', '.join(bad)}")
        settings = {"op": str(op), "algorithm": algorithm, "bucket_mb": float(bucket_mb), "compression": compression,
                    "compression_options": repr(sorted((compression_options or {}).items())),
                    "kernel": repr(kernel), **(settings or {})}
        state = None
        if compression is not None and not problems:
            from ..compression import CompressionState

            try:
                state = CompressionState(comm, compression, average=(op == "avg"), algorithm=algorithm,
                                         **(compression_options or {}))
            except (ValueError, TypeError, KeyError) as e:
                problems.append(f"{type(e).__name__}: {e}")
        agree(comm, layout, settings, problems)
        self.layout, self.op, self.algorithm, self.compression = layout, op, algorithm, state
        alloc = alloc or (lambda n, dt: np.empty(n, dt))
        self.buckets = []
        self._slot = []  # (bucket, view of the parameter inside it)
        for k, (a, b) in enumerate(layout.buckets):
            dt = layout.dtypes[a]
            n = layout.offsets[b - 1] + layout.sizes[b - 1]
            flat = alloc(n, dt)
            flat[...] = 0
            bk = _Bucket(k, a, b, flat, [layout.shapes[i] for i in range(a, b)])
            for i in range(a, b):
                off = layout.offsets[i]
                self._slot.append((bk, flat[off:off + layout.sizes[i]].reshape(layout.shapes[i])))
            self.buckets.append(bk)
        if state is None:
            from ..api import allreduce_init

            for bk in self.buckets:  # collective, in bucket order on every rank
                bk.plan = allreduce_init(bk.flat, comm, op=op, algorithm=algorithm, out=bk.flat, kernel=kernel)
        self._next = 0
        self._ready = np.zeros(len(layout), bool)
        self._waiting = False
        self.spans: list = []

    # -- the one-call contract ----------------------------------------------------------------------------------
    def grad_ready(self, i: int, grad=None) -> None:
        """Parameter ``i``'s gradient is final: copy ``grad`` into its bucket (None: already written into
        ``slot(i)``) and start every bucket that is now full, in index order."""
        if self._ready[i]:
            raise RuntimeError(f"gradient of {self.layout.names[i]!r} reported twice in one step; wait() first "
                               "(accumulate several backward passes before reporting)")
        bk, view = self._slot[i]
        if grad is not None and grad is not view:
            view[...] = grad
        self._ready[i] = True
        bk.remaining -= 1
        self._launch_ready(early=True)
        self.progress()

    def progress(self) -> None:
        """Advance the started buckets' messages without blocking (a few ``Testall`` calls); ``grad_ready`` calls
        it, a caller with long computations between reports may call it more often."""
        for b in self.buckets[:self._next]:
            if b.plan is not None and b.t1 is None and b.plan.test():
                b.t1 = time.perf_counter()

    def wait(self) -> None:
        """Start what is left (a gradient never reported counts as zero) and complete every bucket."""
        for i in np.flatnonzero(~self._ready):
            self._slot[i][1][...] = 0
            self._slot[i][0].remaining -= 1
        self._ready[:] = True
        self._launch_ready(early=False)
        for b in self.buckets:
            if b.plan is not None and b.t1 is None:
                b.plan.wait()
                b.t1 = time.perf_counter()
        self.spans = [(b.index, b.t0, b.t1, b.early) for b in self.buckets]
        if self.compression is not None:
            self.compression.end_step()
        for b in self.buckets:
            b.remaining, b.started, b.t0, b.t1, b.early = b.stop - b.first, False, None, None, False
        self._next = 0
        self._ready[:] = False

    def grad(self, i: int):
        """The reduced gradient of parameter ``i`` after ``wait()`` (a view into its bucket)."""
        return self._slot[i][1]

    slot = grad  # before the step: where grad_ready(i) copies to (write into it and pass grad=None to skip a copy)

    @property
    def pending(self) -> bool:
        """Whether some gradient was reported since the last ``wait()``."""
        return bool(self._ready.any())

    def free(self) -> None:
        """Release the buckets' plans."""
        for b in self.buckets:
            if b.plan is not None:
                b.plan.free()
                b.plan = None

    # -- internals ----------------------------------------------------------------------------------------------
    def _launch_ready(self, early: bool) -> None:
        while self._next < len(self.buckets) and self.buckets[self._next].remaining == 0:
            b = self.buckets[self._next]
            self._next += 1
            b.started, b.early, b.t0 = True, early, time.perf_counter()
            if b.plan is not None:
                b.plan.start()
            else:
                b.flat[...] = self.compression.reduce(b.flat, key=b.index, layout=b.shapes)
                b.t1 = time.perf_counter()


def check_backward_passes(k) -> int:
    """``backward_passes_per_step`` as a positive int, or an ArgumentError."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ArgumentError(f"backward_passes_per_step must be an integer >= 1, got {k!r}")
    return int(k)
