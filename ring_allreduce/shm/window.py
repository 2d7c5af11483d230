"""Arrays that live in an MPI shared-memory window, and the registry that recognizes them by address.

A :class:`SharedWindow` is one collective ``MPI.Win.Allocate_shared`` over the ranks of a node: every rank owns a
segment of the same size, and every rank can read and write every segment through its own mapping
(``Win.Shared_query``). The window is locked once at creation (``Lock_all(MODE_NOCHECK)``), so that ``Win.Sync``
can order plain loads and stores around the barriers of the allreduce path (MPI-3 unified memory model), and
is unlocked and freed by :meth:`SharedWindow.free` (collective over the node).

The registry maps this process's own segment address ranges to windows, so the allreduce can tell, from nothing but
an array's address, that it is *resident* and where each peer's copy of the same bytes lives.
"""
from __future__ import annotations

import bisect
import os
import threading

import numpy as np

from ..ops import check_dtype

_lock = threading.Lock()
_starts: list = []   # sorted start addresses of live own segments
_spans: list = []    # (start, end, window) in the same order
_by_uid: dict = {}   # uid -> live window (every rank of a window's group holds it under the same uid)


class SharedWindow:
    """One shared-memory window: this rank's segment plus uint8 views of every peer's segment."""

    __slots__ = ("win", "comm", "uid", "nbytes", "segments", "rank", "start", "_freed", "__weakref__")

    def __init__(self, comm, nbytes: int):
        """Allocate ``nbytes`` per rank on the node communicator ``comm`` (collective; every rank same size)."""
        from mpi4py import MPI

        self.comm = comm
        self.nbytes = int(nbytes)
        info = MPI.Info.Create()
        info.Set("alloc_shared_noncontig", "true")  # page-aligned per-rank segments: first touch, no false sharing
        try:
            self.win = MPI.Win.Allocate_shared(max(self.nbytes, 1), 1, info, comm)
        finally:
            info.Free()
        self.win.Lock_all(MPI.MODE_NOCHECK)
        self.rank = comm.Get_rank()
        self.segments = []
        for q in range(comm.Get_size()):
            buf, _ = self.win.Shared_query(q)
            self.segments.append(np.frombuffer(buf, dtype=np.uint8, count=self.nbytes))
        # a random id agreed on the node names this allocation in the allreduce's cross-rank consistency check
        uid = np.frombuffer(os.urandom(8), dtype=np.int64).copy() & np.int64(0x3FFFFFFFFFFFFFFF)
        comm.Bcast(uid, root=0)
        self.uid = int(uid[0]) | 1  # never 0, which means "not resident"
        own = self.segments[self.rank]
        self.start = own.__array_interface__["data"][0] if self.nbytes else 0
        self._freed = False
        _by_uid[self.uid] = self
        if self.nbytes:
            _add(self)

    @property
    def freed(self) -> bool:
        return self._freed

    def view(self, q: int, offset: int, count: int, dtype) -> np.ndarray:
        """Return ``count`` elements of ``dtype`` at byte ``offset`` of rank ``q``'s segment."""
        dt = np.dtype(dtype)
        return self.segments[q][offset:offset + count * dt.itemsize].view(dt)

    def sync(self) -> None:
        """Order this process's loads/stores to the window against other ranks' (``MPI_Win_sync``)."""
        self.win.Sync()

    def free(self) -> None:
        """Unlock and free the window (collective over its node communicator); arrays on it become invalid."""
        if self._freed:
            return
        self._freed = True
        _by_uid.pop(self.uid, None)
        _remove(self)
        self.segments = []
        self.win.Unlock_all()
        self.win.Free()

    def __repr__(self) -> str:
        return f"SharedWindow(uid={self.uid:#x}, nbytes={self.nbytes}, rank={self.rank}, freed={self._freed})"


def _add(w: SharedWindow) -> None:
    global _starts, _spans
    with _lock:
        spans = sorted(_spans + [(w.start, w.start + w.nbytes, w)], key=lambda s: s[0])
        _spans, _starts = spans, [s[0] for s in spans]


def _remove(w: SharedWindow) -> None:
    global _starts, _spans
    with _lock:
        spans = [s for s in _spans if s[2] is not w]
        _spans, _starts = spans, [s[0] for s in spans]


def by_uid(uid: int):
    """The live window with this uid in this process, or None."""
    return _by_uid.get(int(uid))


def live_windows() -> int:
    """Number of live windows with a non-empty segment in this process (for leak checks)."""
    return len(_spans)


def lookup(x: np.ndarray):
    """Return ``(window, byte_offset)`` if ``x``'s bytes lie inside this rank's segment of a live window, else None."""
    spans, starts = _spans, _starts  # one consistent snapshot (replaced, never mutated)
    if not spans or not isinstance(x, np.ndarray) or x.size == 0:
        return None
    addr = x.__array_interface__["data"][0]
    i = bisect.bisect_right(starts, addr) - 1
    if i < 0:
        return None
    start, end, w = spans[i]
    if addr + x.nbytes > end:
        return None
    return w, addr - start


class SharedArray(np.ndarray):
    """A NumPy array in a shared-memory window; ``free()`` (or leaving a ``with`` block) releases the window.

    Freeing is collective over the node and unmaps the memory: the array and every view of it must not be used
    afterwards. Views and reshapes stay :class:`SharedArray` and share the owner.
    """

    def __array_finalize__(self, obj):
        w = getattr(obj, "_shm_window", None)
        if w is not None and self.size:
            # np.empty_like / ufunc results are SharedArrays too but live in private memory: keep the owner only
            # for arrays whose bytes lie inside the owner's own segment
            addr = self.__array_interface__["data"][0]
            if w.freed or not (w.start <= addr and addr + self.nbytes <= w.start + w.nbytes):
                w = None
        self._shm_window = w

    @property
    def window(self) -> SharedWindow:
        return self._shm_window

    def free(self) -> None:
        if self._shm_window is not None:
            self._shm_window.free()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.free()
        return False

    def __reduce__(self):  # pickling would copy the data out of shared memory silently: say so instead
        raise TypeError("SharedArray cannot be pickled; use np.array(a) for a private copy")


def _node_comm(comm):
    from . import topology

    st = topology.state(comm)
    st.n_real_nodes()  # learn the node count now, while every rank is in a collective anyway (auto uses it)
    return st.node


def shared_empty(shape, dtype=np.float32, comm=None) -> SharedArray:
    """Allocate an uninitialized array in a new shared window over ``comm``'s node (collective over ``comm``).

    Every rank of ``comm`` must call it with the same shape and dtype; each gets its own segment, which the
    allreduce path reads directly from the peers on the same node.
    """
    from mpi4py import MPI

    if comm is None:
        comm = MPI.COMM_WORLD
    dt = check_dtype(dtype)
    shape = (int(shape),) if np.isscalar(shape) else tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"negative dimension in shape {shape}")
    count = int(np.prod(shape, dtype=np.int64))
    w = SharedWindow(_node_comm(comm), count * dt.itemsize)
    arr = w.view(w.rank, 0, count, dt).reshape(shape).view(SharedArray)
    arr._shm_window = w
    return arr


def shared_zeros(shape, dtype=np.float32, comm=None) -> SharedArray:
    """Like :func:`shared_empty`, filled with zeros (each rank touches its own segment first: NUMA locality)."""
    a = shared_empty(shape, dtype, comm)
    a.fill(0)
    return a


class SharedAllocator:
    """An ``alloc(n, dtype) -> array`` callable handing out shared 1-D arrays; ``close()`` frees them all.

    Every call is collective over ``comm`` (all ranks allocate the same sequence of sizes), as is ``close()``.
    """

    __slots__ = ("comm", "_arrays")

    def __init__(self, comm=None):
        self.comm = comm
        self._arrays = []

    def __call__(self, n, dtype=np.float32) -> SharedArray:
        a = shared_zeros(int(n), dtype, self.comm)
        self._arrays.append(a)
        return a

    @property
    def live(self) -> int:
        return len(self._arrays)

    def close(self) -> None:
        arrays, self._arrays = self._arrays, []
        for a in arrays:
            a.free()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
