"""User errors on the command line: one line on rank 0, exit code 2 on every rank, no traceback, no hang.

* :class:`UsageError` is a user's mistake (a bad flag, a meaningless value, a path that cannot work). Raise it
  anywhere in a subcommand; :func:`guard` turns it into ``ring-allreduce: error: ...`` on rank 0 and exit 2.
* :class:`ArgumentParser` raises :class:`UsageError` (carrying the usage synopsis) instead of printing and
  exiting on every rank, so the usage is printed once.
* :func:`agree` runs checks on every rank and raises the same :class:`UsageError` everywhere when any rank's
  check failed (e.g. a path visible on one node only), so no rank goes on to wait for the others.
* ``KeyboardInterrupt`` (Ctrl-C on ``mpiexec`` forwards SIGINT to every rank) ends each rank with a short
  message on rank 0 and exit 130 instead of a traceback per rank.

Anything else is an internal error and keeps its traceback (see :mod:`ring_allreduce.abort`).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

PREFIX = "ring-allreduce: error: "
#: environment variables that give a process's rank before (or without) MPI_Init: MPICH/Hydra, Open MPI, Slurm
_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID")


class UsageError(Exception):
    """A user's mistake: reported as one line on rank 0, exit code 2 on every rank."""

    def __init__(self, message: str, usage: str = "") -> None:
        super().__init__(message)
        self.usage = usage


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` that raises :class:`UsageError` (with the usage synopsis) instead of exiting."""

    def error(self, message):  # noqa: D401 - argparse's hook
        raise UsageError(message, usage=self.format_usage())

    def _print_message(self, message, file=None):  # --help under mpiexec: rank 0 prints, once
        if rank() == 0:
            super()._print_message(message, file)


def rank() -> int:
    """This process's rank in ``COMM_WORLD`` (from MPI when it is up, else from the launcher's variables)."""
    if "mpi4py.MPI" in sys.modules:
        from mpi4py import MPI

        if MPI.Is_initialized() and not MPI.Is_finalized():
            return MPI.COMM_WORLD.Get_rank()
    for var in _RANK_VARS:
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 0


def agree(comm, check, *args, root=None):
    """Run ``check(*args)`` on every rank (only on ``root`` if given); if it raised :class:`UsageError` anywhere,
    raise it on every rank. Returns ``check``'s result (``root``'s result on every rank when ``root`` is given).

    Costs one small pickled ``allgather``: use it at start-up, not per step.
    """
    error = None
    result = None
    if root is None or comm.Get_rank() == root:
        try:
            result = check(*args)
        except UsageError as e:
            error = e
    mine = (None if error is None else (str(error), error.usage), result if root is not None else None)
    everyone = comm.allgather(mine)
    bad = [r for r, (e, _) in enumerate(everyone) if e is not None]
    if bad:
        message, usage = everyone[bad[0]][0]
        if root is None and len(bad) < len(everyone):
            message += f" (on rank{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))})"
        raise UsageError(message, usage)
    return result if root is None else everyone[root][1]


def guard(fn, argv) -> int:
    """Call ``fn(argv)``; report a :class:`UsageError` or Ctrl-C briefly on rank 0 and return the exit code."""
    try:
        return int(fn(argv) or 0)
    except UsageError as e:
        if rank() == 0:
            sys.stdout.flush()
            sys.stderr.write(f"{e.usage}{PREFIX}{e}\n")
            sys.stderr.flush()
        return 2
    except KeyboardInterrupt:
        if rank() == 0:
            sys.stdout.flush()
            sys.stderr.write("ring-allreduce: interrupted\n")
            sys.stderr.flush()
        else:
            # give rank 0 a moment to print before the launcher, seeing this rank leave, ends the others (a rank 0
            # blocked inside an MPI call cannot run Python until then: the launcher's own lines are all you see)
            time.sleep(0.5)
        # MPI_Finalize could wait for a rank still inside a collective: leave without it (every rank got SIGINT)
        os._exit(130)


# -- value checks shared by the subcommands --------------------------------------------------------------------
def finite(flag: str, value: float, low: float = None, high: float = None, low_open: bool = False) -> float:
    """Return ``value`` if finite and within ``[low, high]`` (``(low, high]`` with ``low_open``), else raise."""
    if value is None:
        return value
    ok = math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"<= {high:g}"
        want = " and ".join(w for w in (lo, hi) if w) or "finite"
        raise UsageError(f"{flag} must be a finite number {want}, got {value}")
    return value


def at_least(flag: str, value: int, low: int) -> int:
    """Return the integer ``value`` if ``>= low``, else raise :class:`UsageError`."""
    if value is not None and value < low:
        raise UsageError(f"{flag} must be >= {low}, got {value}")
    return value
