"""The trainer's byte counter: a counting wire of the communicator's one transport.

``CountingComm(comm)`` is a :class:`ring_allreduce.transport.Wire` over the duplicate communicator of ``comm``'s
transport (created collectively on first use): the algorithms, plans and hooks that are handed it send through it,
and it adds the payload of each point-to-point send (``Send``/``Isend``/``Sendrecv``: what the hand-written
algorithms use) to ``bytes_sent`` and ``messages``; MPI collectives called through it (``Allreduce``, ``Allgather``,
``Bcast``, ...) count the local send buffer in ``collective_bytes``, since what MPI puts on the wire inside a
collective is not visible from Python. Counts are exact payload bytes (no MPI envelope), per rank, since the
last ``reset()``. Each ``CountingComm`` has its own counters; ``.comm`` is the transport's duplicate.
"""
from __future__ import annotations

from ..transport import Wire, buffer_nbytes, of

__all__ = ["CountingComm", "buffer_nbytes"]


class CountingComm(Wire):
    """A counting :class:`~ring_allreduce.transport.Wire` of ``comm``'s transport (see the module docstring)."""

    def __init__(self, comm):
        if not hasattr(comm, "Get_attr"):  # a stand-in without MPI (one-rank unit tests): count on it directly
            super().__init__(comm, None)
            return
        t = of(comm)
        super().__init__(t.comm, t)
