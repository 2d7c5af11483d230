"""A communicator wrapper that counts the bytes this rank hands to MPI's send calls.

``CountingComm(comm)`` forwards every attribute to ``comm`` and adds the payload size of each ``Send``/``Isend``/
``Ssend``/``Sendrecv``/``Sendrecv_replace`` (point-to-point: what the hand-written algorithms use) to
``bytes_sent``; MPI collectives called through it (``Allreduce``, ``Allgather``, ``Bcast``, ...) are counted in
``collective_bytes`` as the size of the local send buffer, since what MPI puts on the wire inside a collective is
not visible from Python. Counts are exact payload bytes (no MPI envelope), per rank, since the last ``reset()``.
Pass the wrapper wherever an algorithm takes ``comm``; ``.comm`` is the wrapped communicator.
"""
from __future__ import annotations


def buffer_nbytes(spec) -> int:
    """Bytes described by an mpi4py buffer spec: ``buf``, ``[buf, type]``, ``[buf, count, type]``, ..."""
    from mpi4py import MPI

    if spec is None or spec is MPI.IN_PLACE or spec is MPI.BOTTOM:
        return 0
    if isinstance(spec, (list, tuple)):
        buf = spec[0]
        if len(spec) >= 3 and isinstance(spec[1], int) and isinstance(spec[-1], MPI.Datatype):
            return int(spec[1]) * spec[-1].Get_size()
        if len(spec) >= 3 and isinstance(spec[1], (list, tuple)) and isinstance(spec[-1], MPI.Datatype):
            return int(spec[1][0]) * spec[-1].Get_size()  # (count, displacement)
        return _nbytes(buf)
    return _nbytes(spec)


def _nbytes(buf) -> int:
    n = getattr(buf, "nbytes", None)
    if n is not None:
        return int(n)
    return memoryview(buf).nbytes


class CountingComm:
    """Forward to ``comm``; count bytes sent by this rank (see the module docstring)."""

    def __init__(self, comm):
        self.comm = comm
        self.bytes_sent = 0
        self.messages = 0
        self.collective_bytes = 0

    def reset(self) -> None:
        self.bytes_sent = self.messages = self.collective_bytes = 0

    def __getattr__(self, name):
        return getattr(self.comm, name)

    def _count(self, spec) -> None:
        self.bytes_sent += buffer_nbytes(spec)
        self.messages += 1

    def Send(self, buf, dest, tag=0):
        self._count(buf)
        return self.comm.Send(buf, dest, tag)

    def Ssend(self, buf, dest, tag=0):
        self._count(buf)
        return self.comm.Ssend(buf, dest, tag)

    def Isend(self, buf, dest, tag=0):
        self._count(buf)
        return self.comm.Isend(buf, dest, tag)

    def Sendrecv(self, sendbuf, dest, sendtag=0, recvbuf=None, source=-1, recvtag=-1, status=None):
        from mpi4py import MPI

        if dest != MPI.PROC_NULL:
            self._count(sendbuf)
        return self.comm.Sendrecv(sendbuf, dest, sendtag, recvbuf, source, recvtag, status)

    def Sendrecv_replace(self, buf, dest, sendtag=0, source=-1, recvtag=-1, status=None):
        from mpi4py import MPI

        if dest != MPI.PROC_NULL:
            self._count(buf)
        return self.comm.Sendrecv_replace(buf, dest, sendtag, source, recvtag, status)

    def _coll(self, name, sendbuf, *args, **kw):
        self.collective_bytes += buffer_nbytes(sendbuf)
        return getattr(self.comm, name)(sendbuf, *args, **kw)

    def Allreduce(self, sendbuf, recvbuf, op=None):
        from mpi4py import MPI

        return self._coll("Allreduce", sendbuf, recvbuf, MPI.SUM if op is None else op)

    def Iallreduce(self, sendbuf, recvbuf, op=None):
        from mpi4py import MPI

        return self._coll("Iallreduce", sendbuf, recvbuf, MPI.SUM if op is None else op)

    def Allgather(self, sendbuf, recvbuf):
        return self._coll("Allgather", sendbuf, recvbuf)

    def Bcast(self, buf, root=0):
        if self.comm.Get_rank() == root:
            self.collective_bytes += buffer_nbytes(buf)
        return self.comm.Bcast(buf, root)
