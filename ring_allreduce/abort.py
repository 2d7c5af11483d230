"""Abort the whole MPI job when one rank raises, naming the rank (as ``python -m mpi4py`` does).

``import ring_allreduce`` makes this module reachable as ``ring_allreduce.abort``; the ``ring-allreduce`` command
installs the hook itself. For your own scripts call :func:`install` first, or run them with
``mpiexec -n 4 python -m mpi4py yourscript.py``.
"""
from __future__ import annotations

import faulthandler
import os
import sys
import traceback

#: seconds ``MPI_Abort`` gets to end this process before it exits by itself
ABORT_GRACE_S = 2.0
_sink = []  # faulthandler writes to a file that must stay open


def abort(comm, code: int, grace: float = ABORT_GRACE_S) -> None:
    """``comm.Abort(code)``, but never hang in it: if this process is still alive ``grace`` seconds later, exit.

    ``MPI_Abort`` asks the launcher to kill the job. When the launcher cannot be reached (this host's link is
    cut) the call spins forever, holding the GIL, and so would every rank on that host. faulthandler's watchdog
    is a C thread that needs no GIL: it ends the process with ``_exit(1)`` after ``grace`` seconds.
    """
    if not _sink:
        _sink.append(open(os.devnull, "w"))
    faulthandler.dump_traceback_later(grace, exit=True, file=_sink[0])
    comm.Abort(code)
    os._exit(code)  # MPI_Abort returned (it should not): do not carry on


def install() -> None:
    """Replace ``sys.excepthook`` so an uncaught exception prints ``rank N: ...`` and aborts ``COMM_WORLD``."""
    previous = sys.excepthook

    def hook(etype, value, tb):
        try:
            from mpi4py import MPI

            if not MPI.Is_initialized() or MPI.Is_finalized():
                return previous(etype, value, tb)
            rank, size = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
        except Exception:  # pragma: no cover - MPI unusable: fall back to the normal report
            return previous(etype, value, tb)
        if size == 1:  # nobody to take down: the normal report, printed once
            return previous(etype, value, tb)
        text = "".join(traceback.format_exception(etype, value, tb))
        sys.stderr.write(f"ring-allreduce: rank {rank} of {size} failed, aborting the job:\n{text}")
        sys.stderr.flush()
        abort(MPI.COMM_WORLD, 1)

    sys.excepthook = hook
