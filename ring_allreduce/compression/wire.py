"""Count bytes at the transport: a communicator proxy whose send calls tally what this rank hands to MPI.

:func:`counting` wraps a communicator (an mpi4py one, or a proxy such as the trainer's ``CountingComm``): every
attribute is forwarded, and ``Send``/``Isend``/``Sendrecv`` (what the hand-written algorithms and the ring
allgather use) plus the collectives add the send buffer's size to ``sent_bytes`` before calling through (it is the
transport's :class:`~ring_allreduce.transport.Wire` with one total). The count is what was handed to MPI, not an
estimate. :func:`ring_allreduce_bytes` is the analytical size for the ring.
"""
from __future__ import annotations

from .. import schedules
from ..transport import Wire, _is_mpi_comm, of


class CountingComm(Wire):
    """A counting :class:`~ring_allreduce.transport.Wire` over ``comm`` (an mpi4py communicator or a proxy of one,
    such as the trainer's): ``sent_bytes`` is everything handed to MPI through it, point-to-point and collective."""

    def __init__(self, comm):
        t = of(comm) if hasattr(comm, "Get_attr") else None  # stand-ins without MPI count on themselves
        super().__init__(comm if (t is None or not _is_mpi_comm(comm)) else t.comm, t)

    @property
    def sent_bytes(self) -> int:
        return self.bytes_sent + self.collective_bytes


def counting(comm) -> CountingComm:
    """Return a byte-counting proxy of ``comm`` (no duplication: same ranks, same context)."""
    return CountingComm(comm)


def ring_allreduce_bytes(rank: int, size: int, count: int, itemsize: int) -> int:
    """Bytes the ring allreduce sends from ``rank`` for ``count`` elements (reduce-scatter plus allgather)."""
    if size == 1 or count == 0:
        return 0
    steps = schedules.ring_reduce_scatter(rank, size, count) + schedules.ring_allgather(rank, size, count)
    return sum(s.send[1] - s.send[0] for s in steps) * itemsize
