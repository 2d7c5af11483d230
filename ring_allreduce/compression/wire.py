"""Count bytes at the transport: a communicator proxy whose send calls tally what this rank hands to MPI.

:func:`counting` wraps a communicator (an mpi4py one, or a proxy such as the trainer's ``CountingComm``): every
attribute is forwarded, and ``Send``/``Isend``/``Sendrecv`` (what the hand-written algorithms and the ring
allgather use) plus ``Allreduce`` add the send buffer's size to ``sent_bytes`` before calling through. The count is
what was handed to MPI, not an estimate. :func:`ring_allreduce_bytes` is the analytical size for the ring.
"""
from __future__ import annotations

from .. import schedules


def _nbytes(spec) -> int:
    buf = spec[0] if isinstance(spec, (list, tuple)) else spec
    n = getattr(buf, "nbytes", None)
    return int(n) if n is not None else memoryview(buf).nbytes


class CountingComm:
    """Forward to ``comm`` and count the bytes this rank sends (``sent_bytes``, ``messages``)."""

    def __init__(self, comm):
        self.comm = comm
        self.sent_bytes = 0
        self.messages = 0

    def __getattr__(self, name):
        return getattr(self.comm, name)

    def _count(self, spec, dest=0):
        from mpi4py import MPI

        if dest != MPI.PROC_NULL and spec is not None and spec is not MPI.IN_PLACE:
            self.sent_bytes += _nbytes(spec)
            self.messages += 1

    def Send(self, buf, dest, tag=0):
        self._count(buf, dest)
        return self.comm.Send(buf, dest, tag)

    def Isend(self, buf, dest, tag=0):
        self._count(buf, dest)
        return self.comm.Isend(buf, dest, tag)

    def Sendrecv(self, sendbuf, dest, sendtag=0, recvbuf=None, source=-1, recvtag=-1, status=None):
        self._count(sendbuf, dest)
        return self.comm.Sendrecv(sendbuf, dest, sendtag, recvbuf, source, recvtag, status)

    def Allreduce(self, sendbuf, recvbuf, op=None):
        from mpi4py import MPI

        # the library's own allreduce: count the buffer handed to it (its internal traffic is not visible)
        self._count(recvbuf if sendbuf is MPI.IN_PLACE else sendbuf)
        return self.comm.Allreduce(sendbuf, recvbuf, MPI.SUM if op is None else op)


def counting(comm) -> CountingComm:
    """Return a byte-counting proxy of ``comm`` (no duplication: same ranks, same context)."""
    return CountingComm(comm)


def ring_allreduce_bytes(rank: int, size: int, count: int, itemsize: int) -> int:
    """Bytes the ring allreduce sends from ``rank`` for ``count`` elements (reduce-scatter plus allgather)."""
    if size == 1 or count == 0:
        return 0
    steps = schedules.ring_reduce_scatter(rank, size, count) + schedules.ring_allgather(rank, size, count)
    return sum(s.send[1] - s.send[0] for s in steps) * itemsize
