"""Shared pieces of the hand-written algorithms: the byte transport and per-thread scratch buffers."""
from __future__ import annotations

import threading

_TAG = 0x5241  # "RA": keeps our point-to-point traffic apart from a user's tags on the same communicator
_local = threading.local()


_MPI: list = []


def mpi():
    """``mpi4py.MPI``, imported once: the import statement costs ~0.3 us a call on the small-message path."""
    if not _MPI:
        from mpi4py import MPI

        _MPI.append(MPI)
    return _MPI[0]


def byte_buf(a):
    """An mpi4py buffer spec sending ``a`` as raw bytes (works for float16 and for device arrays alike)."""
    return [a, (_MPI[0] if _MPI else mpi()).BYTE]


def sendrecv(comm, send, dest, recv, source):
    """Exchange with neighbours; ``dest``/``source`` None (or an empty side) skips that half."""
    MPI = _MPI[0] if _MPI else mpi()
    comm.Sendrecv(byte_buf(send), MPI.PROC_NULL if dest is None else dest, _TAG,
                  byte_buf(recv), MPI.PROC_NULL if source is None else source, _TAG)


def send(comm, buf, dest):
    comm.Send(byte_buf(buf), dest, _TAG)


def recv(comm, buf, source):
    comm.Recv(byte_buf(buf), source, _TAG)


def scratch(kernel, n: int, dtype, slot: int = 0):
    """Return a reusable scratch array of at least ``n`` elements (per thread, kernel, dtype and slot)."""
    cache = getattr(_local, "cache", None)
    if cache is None:
        cache = _local.cache = {}
    key = (kernel.name, dtype, slot)  # the dtype itself: str(dtype) costs ~0.3 us a call
    buf = cache.get(key)
    if buf is None or buf.size < n:
        buf = cache[key] = kernel.empty(max(n, 1), dtype)
    return buf[:n]


def release_scratch() -> None:
    """Drop this thread's scratch buffers (they are otherwise kept for the next call)."""
    _local.cache = {}
