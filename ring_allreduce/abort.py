"""Abort the whole MPI job when one rank raises, naming the rank (as ``python -m mpi4py`` does).

``import ring_allreduce`` makes this module reachable as ``ring_allreduce.abort``; the ``ring-allreduce`` command
installs the hook itself. For your own scripts call :func:`install` first, or run them with
``mpiexec -n 4 python -m mpi4py yourscript.py``.
"""
from __future__ import annotations

import faulthandler
import os
import stat
import sys
import time
import traceback

#: seconds ``MPI_Abort`` gets to end this process before it exits by itself
ABORT_GRACE_S = 2.0
#: at most this long for the launcher to take what this rank wrote before it tears the job down
DRAIN_LIMIT_S = 1.0
_sink = []  # faulthandler writes to a file that must stay open


def drained(fd: int, limit: float = DRAIN_LIMIT_S) -> bool:
    """Wait (at most ``limit`` s) until the reader of pipe ``fd`` has taken everything written to it.

    Launchers forward a rank's output through a pipe. ``MPI_Abort`` can reach the launcher first, and the launcher
    then kills its proxy with the report still unread in the pipe (MPICH under load: the job ended with nothing
    printed). True when ``fd`` is not a pipe or is empty; False when the wait ran out.
    """
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return True
        import fcntl
        import termios
    except (OSError, ImportError):
        return True
    buf = bytearray(4)
    deadline = time.monotonic() + limit
    while True:
        try:
            fcntl.ioctl(fd, termios.FIONREAD, buf)
        except OSError:
            return True
        if int.from_bytes(buf, sys.byteorder) == 0:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.002)


def _let_the_launcher_read(limit: float = DRAIN_LIMIT_S) -> None:
    """Flush stdout and stderr and wait (``limit`` s in all) until the launcher has read what this rank wrote."""
    deadline = time.monotonic() + limit
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
            drained(f.fileno(), max(0.0, deadline - time.monotonic()))
        except (AttributeError, ValueError, OSError):  # replaced or closed: no descriptor to wait on
            pass


def abort(comm, code: int, grace: float = ABORT_GRACE_S) -> None:
    """``comm.Abort(code)``, but never hang in it: if this process is still alive ``grace`` seconds later, exit.

    ``MPI_Abort`` asks the launcher to kill the job. When the launcher cannot be reached (this host's link is
    cut) the call spins forever, holding the GIL, and so would every rank on that host. faulthandler's watchdog
    is a C thread that needs no GIL: it ends the process with ``_exit(1)`` after ``grace`` seconds. Before the
    call, what this rank printed is left to reach the launcher (within the same ``grace``).
    """
    if not _sink:
        _sink.append(open(os.devnull, "w"))
    faulthandler.dump_traceback_later(grace, exit=True, file=_sink[0])
    _let_the_launcher_read()
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
        abort(MPI.COMM_WORLD, 1)

    sys.excepthook = hook
