"""Shared pieces of the hand-written algorithms: byte messages, the step-sequence driver, per-thread scratch.

A built-in algorithm is written once, as a *step sequence*: a generator ``steps(comm, src, dst, op, kernel, div,
tag=...)`` that posts nonblocking sends and receives and yields each list of requests it must see completed before
it can go on (reducing what arrived, posting the next messages). :func:`blocking` turns it into the registry's
blocking function (wait on each list in turn); a nonblocking plan (:mod:`ring_allreduce.plan`) tests the same
lists and advances when they are done, so blocking and nonblocking runs send the same messages and compute the
same bytes.
"""
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


def overlaps(a, b) -> bool:
    """Whether two arrays of any backend may share memory (device arrays: by their CUDA array interface)."""
    import numpy as np

    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return np.may_share_memory(a, b)
    ia, ib = a.__cuda_array_interface__, b.__cuda_array_interface__
    pa, pb = ia["data"][0], ib["data"][0]
    return pa < pb + b.nbytes and pb < pa + a.nbytes


def isendrecv(comm, send, dest, recv, source, tag=_TAG):
    """Post the exchange with neighbours (``None`` skips a side); returns the requests to yield."""
    reqs = []
    if source is not None:
        reqs.append(comm.Irecv(byte_buf(recv), source, tag))
    if dest is not None:
        reqs.append(comm.Isend(byte_buf(send), dest, tag))
    return reqs


def blocking(steps):
    """The blocking form ``fn(comm, src, dst, op, kernel, div=None, **kw)`` of a step sequence (see module doc)."""
    def fn(comm, src, dst, op, kernel, div=None, **kw):
        waitall = (_MPI[0] if _MPI else mpi()).Request.Waitall
        for reqs in steps(comm, src, dst, op, kernel, div, **kw):
            waitall(reqs)

    fn.steps = steps
    fn.__name__ = fn.__qualname__ = steps.__name__.replace("_steps", "")
    fn.__doc__ = steps.__doc__
    return fn


def send(comm, buf, dest):
    comm.Send(byte_buf(buf), dest, _TAG)


def recv(comm, buf, source):
    comm.Recv(byte_buf(buf), source, _TAG)


def scratch(kernel, n: int, dtype, slot: int = 0, pool=None):
    """Return a reusable scratch array of at least ``n`` elements (per thread, kernel, dtype and slot).

    ``pool``: a dict owned by the caller (a plan: runs of different plans may be in flight at once) instead of
    the thread's cache.
    """
    cache = pool if pool is not None else getattr(_local, "cache", None)
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
