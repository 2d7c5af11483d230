"""Abort the whole MPI job when one rank raises, naming the rank (as ``python -m mpi4py`` does)."""
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
        text = "".join(traceback.format_exception(etype, value, tb))
        sys.stderr.write(f"ring-allreduce: rank {rank} of {size} failed, aborting the job:\n{text}")
        sys.stderr.flush()
        if size > 1:
            MPI.COMM_WORLD.Abort(1)
        else:
            previous(etype, value, tb)

    sys.excepthook = hook
