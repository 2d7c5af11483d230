"""The native ``MPI.Allreduce``, registered as algorithm ``"mpi"`` so it can be compared in the same run."""
from __future__ import annotations

from ..ops import mpi_op
from ._common import _MPI, mpi


def native(comm, src, dst, op, kernel, div=None):
    # mpi4py derives the MPI datatype from the array's typecode (float16 -> MPIX_C_FLOAT16 where MPI has it)
    comm.Allreduce((_MPI[0] if _MPI else mpi()).IN_PLACE if src is dst else src, dst, mpi_op(op))
    if div is not None and div != 1:
        kernel.scale(dst, dst, div)


def native_steps(comm, src, dst, op, kernel, div=None, tag=None, pool=None):
    """The nonblocking form: ``MPI_Iallreduce`` progressed by the MPI library, then the division."""
    yield [comm.Iallreduce((_MPI[0] if _MPI else mpi()).IN_PLACE if src is dst else src, dst, mpi_op(op))]
    if div is not None and div != 1:
        kernel.scale(dst, dst, div)


native.steps = native_steps
