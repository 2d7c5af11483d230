"""Stall inspection (which ranks have not arrived at a collective) and a polling wait with a deadline.

The inspection is a pure function of a progress table ``{rank: (step, phase, since)}`` (filled by the heartbeat
thread, see :mod:`.heartbeat`), so it is tested without MPI. A rank counts as *waiting* while it is in a
collective phase (``comm`` or ``wait``); when some rank has waited longer than the threshold, the ranks that have
not reached that collective (an earlier step, or the same step outside a collective phase) are named, as
Horovod's stall inspector does.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

#: phases during which a rank is blocked on the other ranks
COLLECTIVE_PHASES = frozenset({"comm", "wait"})


class StallError(RuntimeError):
    """A wait on other ranks exceeded its deadline; the message names the ranks that did not arrive."""

    def __init__(self, message: str, missing: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.missing = list(missing)


class RankFailureError(RuntimeError):
    """One or more ranks stopped sending heartbeats (died or hang); ``ranks`` lists them."""

    def __init__(self, message: str, ranks: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.ranks = list(ranks)


@dataclass
class Stall:
    """A detected stall: who waits (since how long), at which step, and who has not arrived."""

    step: int
    phase: str
    waiting: List[int]
    waited_s: float
    missing: List[int]
    where: Dict[int, Tuple[int, str, float]] = field(default_factory=dict)  # missing rank -> (step, phase, for_s)

    def message(self) -> str:
        head = (f"ring-allreduce stall: rank(s) {self.waiting} have waited {self.waited_s:.1f} s in {self.phase} "
                f"at step {self.step}")
        if not self.missing:
            return head + "; every rank is inside the collective (slow network or a deadlock in the algorithm)"
        parts = [f"rank {r} ({ph} at step {st} for {dt:.1f} s)" for r, (st, ph, dt) in sorted(self.where.items())]
        return head + "; not arrived: " + ", ".join(parts)


def find_stall(table: Dict[int, Tuple[int, str, float]], now: float, threshold: float) -> Optional[Stall]:
    """Return the stall in ``table`` (``rank -> (step, phase, since)``, monotonic seconds) or None.

    A stall exists when some rank has been in a collective phase for at least ``threshold`` seconds.
    """
    waiting = [(r, st, ph, now - since) for r, (st, ph, since) in table.items()
               if ph in COLLECTIVE_PHASES and now - since >= threshold]
    if not waiting:
        return None
    step = min(st for _, st, _, _ in waiting)
    first = [w for w in waiting if w[1] == step]
    phase = first[0][2]
    missing = {r: (st, ph, now - since) for r, (st, ph, since) in table.items()
               if st < step or (st == step and ph not in COLLECTIVE_PHASES)}
    return Stall(step=step, phase=phase, waiting=sorted(r for r, *_ in first),
                 waited_s=max(w for *_, w in first), missing=sorted(missing), where=missing)


def wait(requests, *, timeout: Optional[float] = None, what: str = "a collective", on_stall=None,
         stall_timeout: Optional[float] = None, missing=None, max_sleep: float = 1e-3):
    """Wait for every request in ``requests`` by polling ``Testall``, never longer than ``timeout`` seconds.

    Sleeps between polls with an exponential back-off (50 us up to ``max_sleep``), so a long wait does not spin a
    core that an oversubscribed neighbour needs. After ``stall_timeout`` seconds ``on_stall(elapsed)`` is called
    once (e.g. to print who has not arrived); after ``timeout`` it raises :class:`StallError` naming
    ``missing()`` (a callable returning the ranks still awaited), leaving the requests pending (the caller is
    expected to abort). Returns the elapsed seconds.
    """
    from mpi4py import MPI

    reqs = list(requests)
    t0 = time.monotonic()
    pause = 5e-5
    warned = False
    while not MPI.Request.Testall(reqs):
        elapsed = time.monotonic() - t0
        if stall_timeout is not None and not warned and elapsed >= stall_timeout:
            warned = True
            if on_stall is not None:
                on_stall(elapsed)
        if timeout is not None and elapsed >= timeout:
            who = list(missing()) if missing is not None else []
            tail = f"; still waiting for rank(s) {who}" if who else ""
            raise StallError(f"ring-allreduce: {what} did not complete within {timeout:g} s{tail}", who)
        time.sleep(pause)
        pause = min(pause * 2, max_sleep)
    return time.monotonic() - t0
