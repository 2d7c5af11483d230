"""Shared pieces of the hand-written algorithms: the byte transport and per-thread scratch buffers."""
from __future__ import annotations

import threading

_TAG = 0x5241  # "RA": keeps our point-to-point traffic apart from a user's tags on the same communicator
_local = threading.local()


def byte_buf(a):
    """An mpi4py buffer spec sending ``a`` as raw bytes (works for float16 and for device arrays alike)."""
    from mpi4py import MPI

    return [a, MPI.BYTE]


def sendrecv(comm, send, dest, recv, source):
    """Exchange with neighbours; ``dest``/``source`` None (or an empty side) skips that half."""
    from mpi4py import MPI

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
    key = (kernel.name, str(dtype), slot)
    buf = cache.get(key)
    if buf is None or buf.size < n:
        buf = cache[key] = kernel.empty(max(n, 1), dtype)
    return buf[:n]


def release_scratch() -> None:
    """Drop this thread's scratch buffers (they are otherwise kept for the next call)."""
    _local.cache = {}
