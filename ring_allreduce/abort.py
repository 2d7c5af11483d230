"""Abort the whole MPI job when one rank raises, naming the rank (as ``python -m mpi4py`` does).

``import ring_allreduce`` makes this module reachable as ``ring_allreduce.abort``; the ``ring-allreduce`` command
installs the hook itself. For your own scripts call :func:`install` first, or run them with
``mpiexec -n 4 python -m mpi4py yourscript.py``.
"""
from __future__ import annotations

import sys
import traceback


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
        MPI.COMM_WORLD.Abort(1)

    sys.excepthook = hook
