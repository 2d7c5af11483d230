"""Gradient buckets over one flat storage, and their exchange overlapped with backward.

The storage comes from a pluggable ``alloc(n, dtype) -> 1-D array`` (default :func:`numpy.empty`; the
shared-memory path passes an allocator returning arrays resident in the node's shared window). Buckets are
contiguous slices of it holding whole parameters, about ``bucket_mb`` MiB each, in backward order.

:class:`BucketExchange` hands each bucket to the comm hook as soon as backward has produced it:

- ``overlap="thread"``: a communication thread runs the hook while the main thread computes the earlier layers;
- ``overlap="nonblocking"``: the hook returns a pending request (the default hook: a nonblocking ring) that the
  main thread advances between layers;
- ``overlap="none"``: every bucket is reduced after backward, one after the other.

Every rank launches the buckets in the same order (bucket 0 first), which is what keeps the collectives matched.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Callable, List, Sequence

import numpy as np

from .hooks import Bucket

OVERLAP_MODES = ("thread", "nonblocking", "none")


def plan_buckets(specs: Sequence, bucket_bytes: int, itemsize: int) -> List[tuple]:
    """Group consecutive parameters (``specs``: offset/size/name in storage order) into ``(start, stop, names)``.

    A bucket closes once it holds at least ``bucket_bytes``; ``bucket_bytes <= 0`` means one bucket for all.
    """
    plan, start, names = [], None, []
    for s in specs:
        if start is None:
            start = s.offset
        names.append(s.name)
        stop = s.offset + s.size
        if bucket_bytes > 0 and (stop - start) * itemsize >= bucket_bytes:
            plan.append((start, stop, tuple(names)))
            start, names = None, []
    if start is not None:
        plan.append((start, stop, tuple(names)))
    return plan


class GradientStorage:
    """The flat gradient array (from ``alloc``) and its buckets."""

    def __init__(self, specs: Sequence, n: int, dtype, bucket_mb: float = 1.0,
                 alloc: Callable = None):
        alloc = alloc or (lambda k, dt: np.empty(k, dtype=dt))
        self.dtype = np.dtype(dtype)
        self.flat = alloc(n, self.dtype)
        if self.flat.shape != (n,) or self.flat.dtype != self.dtype:
            raise ValueError(f"allocator returned shape {self.flat.shape} dtype {self.flat.dtype}; "
                             f"expected ({n},) {self.dtype}")
        self.flat[...] = 0
        plan = plan_buckets(specs, int(bucket_mb * 2 ** 20), self.dtype.itemsize)
        self.buckets = [Bucket(i, a, b, names, self.flat[a:b]) for i, (a, b, names) in enumerate(plan)]


class BucketExchange:
    """Run ``hook(state, bucket)`` on each bucket as soon as it is ready; ``finish()`` waits for all of them.

    ``spans`` collects ``(bucket index, t0, t1)`` of each hook call in the current step (``time.perf_counter``),
    for the timeline and the busy-time share.
    """

    def __init__(self, storage: GradientStorage, hook, state, overlap: str = "thread"):
        if overlap not in OVERLAP_MODES:
            raise ValueError(f"overlap must be one of {', '.join(OVERLAP_MODES)}, got {overlap!r}")
        self.storage, self.hook, self.state, self.overlap = storage, hook, state, overlap
        self.buckets = storage.buckets
        self.spans: List[tuple] = []
        self._next = 0
        self._pending: list = []
        self._thread = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._done = 0
        self._cond = threading.Condition()
        self._error = None

    def set_hook(self, hook, state) -> None:
        self.hook, self.state = hook, state

    def begin(self) -> None:
        """Start a step: no bucket launched yet."""
        self._next = 0
        self._done = 0
        self._pending = []
        self.spans = []

    def ready(self, n: int) -> None:
        """Backward's callback: ``storage.flat[:n]`` is final; launch every bucket inside it."""
        if self.overlap == "none":
            return
        while self._next < len(self.buckets) and self.buckets[self._next].stop <= n:
            self._launch(self.buckets[self._next])
            self._next += 1
        if self.overlap == "nonblocking":
            self._progress()

    def finish(self) -> None:
        """Launch what is left and wait until every bucket holds its reduced sum."""
        if self.overlap == "none":
            for b in self.buckets:
                self._run(b)
            return
        while self._next < len(self.buckets):
            self._launch(self.buckets[self._next])
            self._next += 1
        if self.overlap == "thread":
            with self._cond:
                while self._done < len(self.buckets) and self._error is None:
                    self._cond.wait()
            if self._error is not None:
                err, self._error = self._error, None
                raise RuntimeError(f"communication thread failed: {err!r}") from err
            return
        for b, t0, res in self._pending:
            self._store(b, res.wait())
            self.spans.append((b.index, t0, time.perf_counter()))
        self._pending = []

    def close(self) -> None:
        """Stop the communication thread (if any)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    # -- internals -------------------------------------------------------------------------------------------
    def _store(self, b: Bucket, res) -> None:
        if res is not b.buffer:
            b.buffer[...] = res

    def _run(self, b: Bucket) -> None:
        t0 = time.perf_counter()
        res = self.hook(self.state, b)
        if hasattr(res, "wait"):
            res = res.wait()
        self._store(b, res)
        self.spans.append((b.index, t0, time.perf_counter()))

    def _launch(self, b: Bucket) -> None:
        if self.overlap == "thread":
            if self._thread is None:
                self._thread = threading.Thread(target=self._worker, name="ra-comm", daemon=True)
                self._thread.start()
            self._queue.put(b)
            return
        t0 = time.perf_counter()
        res = self.hook(self.state, b)
        if hasattr(res, "wait"):
            self._pending.append((b, t0, res))
        else:
            self._store(b, res)
            self.spans.append((b.index, t0, time.perf_counter()))

    def _progress(self) -> None:
        for _, _, res in self._pending:
            prog = getattr(res, "progress", None)
            if prog is not None:
                prog()

    def _worker(self) -> None:
        while True:
            b = self._queue.get()
            if b is None:
                return
            try:
                self._run(b)
            except BaseException as e:  # surfaced by finish() on the main thread
                with self._cond:
                    self._error = e
                    self._cond.notify_all()
                continue
            with self._cond:
                self._done += 1
                self._cond.notify_all()
