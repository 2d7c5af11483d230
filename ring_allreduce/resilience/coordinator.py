"""The backup-worker coordinator: a thread on one rank that decides each step's contributor set.

Protocol (control messages on a duplicated communicator, small int64 arrays, never the gradient data):

* every rank, when its gradient for step ``t`` is ready, sends ``READY(rank, t)`` to the coordinator;
* the coordinator keeps one open step. The first ``p - b`` ranks whose ``READY`` names the open step form its
  contributor set; the decision is sent at once to every rank, without waiting for the other ``b``;
* a ``READY`` for an already decided step comes from a late rank: it is put on the catch-up list and named in
  the next decision, whose *server* (its lowest contributor) sends it the new state after the update. With a
  staleness bound ``s`` > 0, a late rank at most ``s`` steps behind also adds its (stale) gradient to that step;
* at a synchronisation point (end of an epoch, a checkpoint, the end of training) every rank sends ``SYNC``;
  once every rank has synced or waits for catch-up, a *flush* decision serves the waiting ranks from a synced
  one, and ``SYNCED`` releases everyone at the same step. A ``FINAL`` sync also ends the thread.

Running the coordinator in a thread (not in the rank's main loop) is what keeps the agreement off the critical
path: if the coordinator's own rank is the straggler, its thread still answers while its main thread computes
(NumPy and ``sleep`` release the GIL).
"""
from __future__ import annotations

import atexit
import sys
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np

READY, SYNC, FINAL = 1, 2, 3  # rank -> coordinator kinds
NORMAL, FLUSH, SYNCED = 1, 2, 3  # coordinator -> rank kinds
TAG_READY, TAG_DECIDE = 0x2B1, 0x2B2


@dataclass(frozen=True)
class Decision:
    """One step's outcome: who contributed (with the step each gradient was computed at) and who catches up."""

    kind: int
    step: int
    server: int
    contributors: Tuple[int, ...]
    contributor_steps: Tuple[int, ...]
    catchup: Tuple[int, ...]

    @property
    def stale(self) -> Tuple[int, ...]:
        """Contributors whose gradient was computed at an earlier step (bounded-staleness mode)."""
        return tuple(r for r, s in zip(self.contributors, self.contributor_steps) if s != self.step)

    def to_dict(self) -> dict:
        return {"step": self.step, "contributors": list(self.contributors),
                "contributor_steps": list(self.contributor_steps), "catchup": list(self.catchup),
                "server": self.server, "flush": self.kind == FLUSH}


def decision_size(p: int) -> int:
    return 6 + 3 * p


def encode(d: Decision, p: int) -> np.ndarray:
    buf = np.full(decision_size(p), -1, dtype=np.int64)
    n, m = len(d.contributors), len(d.catchup)
    buf[:6] = (d.kind, d.step, d.server, n, m, 0)
    buf[6:6 + n] = d.contributors
    buf[6 + p:6 + p + n] = d.contributor_steps
    buf[6 + 2 * p:6 + 2 * p + m] = d.catchup
    return buf


def decode(buf: np.ndarray, p: int) -> Decision:
    kind, step, server, n, m = (int(v) for v in buf[:5])
    return Decision(kind, step, server, tuple(int(v) for v in buf[6:6 + n]),
                    tuple(int(v) for v in buf[6 + p:6 + p + n]), tuple(int(v) for v in buf[6 + 2 * p:6 + 2 * p + m]))


class Coordinator:
    """Decide contributor sets in a daemon thread on the coordinator rank (see the module docstring).

    Args:
        ctrl: the control communicator (a ``Dup`` owned by :class:`~.backup.BackupWorkers`).
        backup: b, the number of ranks a step does not wait for.
        staleness: how many steps late a gradient may be and still be added (0: late gradients are dropped).
        start_step: the first open step (the resumed step after a checkpoint).
    """

    def __init__(self, ctrl, backup: int, staleness: int = 0, start_step: int = 0) -> None:
        self.ctrl = ctrl
        self.p = ctrl.Get_size()
        self.quorum = self.p - backup
        self.staleness = staleness
        self.open_step = start_step
        self.decisions: List[Decision] = []
        self.error = None
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._main, name="backup-coordinator", daemon=True)

    def start(self) -> "Coordinator":
        self._thread.start()
        # a run that ends abnormally never sends FINAL: stop polling before mpi4py's atexit finalizes MPI
        atexit.register(self._at_exit)
        return self

    def _at_exit(self) -> None:
        self._halt.set()
        self._thread.join(1.0)

    def join(self, timeout=None) -> None:
        self._thread.join(timeout)
        if not self._thread.is_alive():
            atexit.unregister(self._at_exit)

    def _main(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # a protocol bug must end the job loudly, not leave ranks waiting
            self.error = e
            sys.stderr.write(f"ring-allreduce: backup-worker coordinator failed: {type(e).__name__}: {e}\n")
            sys.stderr.flush()
            from ..abort import abort

            abort(self.ctrl, 4)

    def _loop(self) -> None:
        from mpi4py import MPI

        ctrl, p = self.ctrl, self.p
        ready: List[int] = []
        waiting: Dict[int, int] = {}  # late rank -> the step its gradient was computed at
        synced: List[int] = []
        final = 0
        self._sends: list = []
        # one receive per source, not MPI_ANY_SOURCE: MPICH's ch4 (UCX over TCP between hosts, shared memory
        # within one) lost wildcard messages from the other host ("unexpected tag-receive descriptor was not
        # matched"), and the job stalled at step 0 on the emulated cluster
        boxes = [np.zeros(3, dtype=np.int64) for _ in range(p)]
        reqs = [ctrl.Irecv(boxes[r], r, TAG_READY) for r in range(p)]
        arrived: List[int] = []  # sources whose message is complete, in the order they were seen
        pause = 2e-5
        while not self._halt.is_set():
            if not arrived:
                done = MPI.Request.Testsome(reqs) or []
                if not done:
                    # back off so the polling thread does not steal a core from an oversubscribed neighbour
                    time.sleep(pause)
                    pause = min(pause * 2, 5e-4)
                    continue
                arrived = sorted(done)
            pause = 2e-5
            src = arrived.pop(0)
            kind, rank, step = (int(v) for v in boxes[src])
            reqs[src] = ctrl.Irecv(boxes[src], src, TAG_READY)
            if kind in (SYNC, FINAL):
                if step != self.open_step:
                    raise RuntimeError(f"rank {rank} synchronises at step {step} but step {self.open_step} is open")
                synced.append(rank)
                final += kind == FINAL
            elif step == self.open_step:
                ready.append(rank)
            elif step < self.open_step:
                waiting[rank] = step
            else:
                raise RuntimeError(f"rank {rank} announced step {step} while step {self.open_step} is open")
            if len(ready) == self.quorum:
                t = self.open_step
                stale = sorted(r for r, s in waiting.items() if t - s <= self.staleness)
                members = sorted(ready + stale)
                steps = tuple(t if r in ready else waiting[r] for r in members)
                d = Decision(NORMAL, t, min(ready), tuple(members), steps, tuple(sorted(waiting)))
                self._broadcast(d)
                ready, waiting = [], {}
                self.open_step = t + 1
            elif synced and len(synced) + len(waiting) == p and waiting:
                d = Decision(FLUSH, self.open_step, min(synced), (), (), tuple(sorted(waiting)))
                self._broadcast(d)
                waiting = {}
            elif synced and ready and len(synced) + len(waiting) + len(ready) == p:
                raise RuntimeError(f"rank(s) {ready} announced step {self.open_step} while rank(s) {synced} "
                                   "synchronise there: the ranks disagree on where the synchronisation points are")
            if len(synced) == p:
                self._broadcast(Decision(SYNCED, self.open_step, -1, (), (), ()), record=False)
                if final:
                    if final != p:
                        raise RuntimeError("some ranks ended training while others only synchronised")
                    for r in reqs:
                        r.Cancel()
                    MPI.Request.Waitall(reqs)
                    MPI.Request.Waitall([s for s, _ in self._sends])
                    return
                synced, final = [], 0

    def _broadcast(self, d: Decision, record: bool = True) -> None:
        """Send ``d`` to every rank (nonblocking: a slow rank's full queue must not hold the others back)."""
        if record:
            self.decisions.append(d)
        buf = encode(d, self.p)
        self._sends = [(s, b) for s, b in self._sends if not s.Test()]
        self._sends += [(self.ctrl.Isend(buf, r, TAG_DECIDE), buf) for r in range(self.p)]
