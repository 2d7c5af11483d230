"""Backup workers on the AllReduce path: each step averages the gradients of the first p - b ranks to finish.

Design (the README's "why"):

* **Agreement off the critical path.** Each rank, as soon as its gradient is ready, sends a tiny ``READY``
  message on a separate control communicator to a coordinator *thread* on rank 0 (:mod:`.coordinator`). The
  first p - b arrivals form the step's contributor set, which the thread sends to every rank at once. Nobody
  waits for the b slowest ranks, not even when rank 0 itself is slow (its thread answers while it computes).
* **Contributors reduce among themselves.** They average their gradients with the hand-written allreduce on a
  sub-communicator of exactly the contributors (``MPI_Comm_create_group``, collective over the members only,
  cached per set), divide by the number of contributors, and apply the same optimizer update, so their
  parameters stay bit-identical. With b = 0 the set is every rank and the step is plain synchronous SGD on the
  same communicator, bit for bit.
* **Late ranks catch up by state transfer, not by replay.** A rank whose ``READY`` arrives after the step was
  decided drops that gradient (or, with ``staleness`` s > 0, adds it to the next step if it is at most s steps
  old) and is named in the next decision; that step's server (its lowest contributor) sends it the full
  replicated state (parameters and optimizer buffers) right after the update, and the late rank resumes at the
  new step. A rank five times slower therefore skips steps instead of falling further and further behind, and
  it never mixes an old gradient into a new step by accident.
* Every rank receives every decision, so each rank's :attr:`BackupWorkers.decisions` is the full record of
  which ranks contributed to which step (tests check each update against it).

The state passed to :meth:`BackupWorkers.step` must be the *whole* replicated state: anything a late rank does
not receive (e.g. a momentum buffer left out) would silently diverge.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, List, Optional, Sequence

import numpy as np

from . import coordinator as co
from .stall import wait as poll_wait

_TAG_STATE = 0x5E1


@dataclass
class StepRecord:
    """What one call of :meth:`BackupWorkers.step` did on this rank."""

    step: int  # the step this rank's gradient was computed at
    decision: co.Decision  # the decision that ended the call (contributor or catch-up)
    role: str  # "contributor", "stale" (late gradient added) or "late" (gradient dropped)
    version: int  # the step this rank continues from (parameters after `version` updates)
    wait_s: float  # READY sent -> decision received
    comm_s: float  # the allreduce among contributors
    catchup_s: float  # receiving the state (late ranks)


def default_reduce(algorithm: str = "auto") -> Callable:
    """Return ``reduce(buf, comm)`` averaging ``buf`` in place with the hand-written allreduce."""
    from ..api import allreduce

    def reduce(buf, comm):
        allreduce(buf, comm, op="avg", algorithm=algorithm, out=buf, check=False)

    return reduce


class BackupWorkers:
    """Run synchronous data-parallel steps that wait only for the first ``p - b`` ranks (collective constructor).

    Args:
        comm: the training communicator (duplicated twice: control messages and data/sub-communicators).
        backup_workers: b, 0 <= b < p.
        staleness: 0 drops late gradients; s > 0 adds a late gradient to the next step if at most s steps old.
        reduce: ``reduce(buf, comm)`` that averages ``buf`` in place over ``comm`` (default: the hand-written
            allreduce with ``op="avg"``); the trainer passes its own (bucketed) reduction.
        start_step: the step to start from (a resumed checkpoint's step); every rank must pass the same.
        timeout: seconds any single wait may last before :class:`~.stall.StallError` (None: the heartbeat
            detects dead ranks instead).
        timeline, heartbeat: optional :class:`~.timeline.Timeline` / :class:`~.heartbeat.Heartbeat` to report to.
    """

    def __init__(self, comm, backup_workers: int, *, staleness: int = 0, reduce: Optional[Callable] = None,
                 start_step: int = 0, timeout: Optional[float] = None, timeline=None, heartbeat=None) -> None:
        p = comm.Get_size()
        b, s = int(backup_workers), int(staleness)
        mine = (b, s, int(start_step))
        everyone = comm.allgather(mine)  # settings must agree before any step message is sent
        if len(set(everyone)) > 1:
            groups: Dict[tuple, list] = {}
            for r, v in enumerate(everyone):
                groups.setdefault(v, []).append(r)
            raise ValueError("ranks disagree on (backup_workers, staleness, start_step): "
                             + "; ".join(f"{v} on rank(s) {rs}" for v, rs in groups.items()))
        if not 0 <= b < p:
            raise ValueError(f"backup_workers must satisfy 0 <= b < p = {p} (at least one rank must contribute), "
                             f"got {b}")
        if s < 0:
            raise ValueError(f"staleness must be >= 0, got {s}")
        self.p, self.rank, self.backup, self.staleness = p, comm.Get_rank(), b, s
        self.ctrl = comm.Dup()
        self.data = comm.Dup()
        self.reduce = reduce or default_reduce()
        self.timeout = timeout
        self.timeline, self.heartbeat = timeline, heartbeat
        self.version = int(start_step)
        self.decisions: List[co.Decision] = []
        self.records: List[StepRecord] = []
        self._subcomms: Dict[FrozenSet[int], object] = {}
        self._inbox = np.zeros(co.decision_size(p), dtype=np.int64)
        self._closed = False
        # one rank needs no agreement: every step is decided locally (and no thread runs)
        self.coordinator = co.Coordinator(self.ctrl, b, s, self.version).start() if self.rank == 0 and p > 1 else None

    # -- helpers ----------------------------------------------------------------------------------------------
    def _phase(self, phase: str) -> None:
        if self.heartbeat is not None:
            self.heartbeat.progress(self.version, phase)

    def _span(self, name, t0, step, **args):
        if self.timeline is not None:
            self.timeline.add(name, t0 * 1e6, (time.time() - t0) * 1e6, step, **args)

    def _announce(self, kind: int, step: int):
        msg = np.array([kind, self.rank, step], dtype=np.int64)
        return self.ctrl.Isend(msg, 0, co.TAG_READY), msg

    def _next_decision(self, what: str) -> co.Decision:
        req = self.ctrl.Irecv(self._inbox, 0, co.TAG_DECIDE)
        poll_wait([req], timeout=self.timeout, what=f"rank {self.rank} waiting for the {what}",
                  missing=lambda: [0])
        d = co.decode(self._inbox, self.p)
        if d.kind == co.NORMAL:
            self.decisions.append(d)
        return d

    def subcomm(self, members: Sequence[int]):
        """Return the cached communicator of ``members`` (created collectively by the members on first use)."""
        key = frozenset(members)
        if len(key) == self.p:
            return self.data
        comm = self._subcomms.get(key)
        if comm is None:
            group = self.data.Get_group().Incl(sorted(key))
            tag = sum(1 << r for r in key) & 0x7FFF  # distinct sets use distinct tags (p <= 15)
            comm = self.data.Create_group(group, tag)
            group.Free()
            self._subcomms[key] = comm
        return comm

    def _serve(self, d: co.Decision, state: Sequence[np.ndarray]) -> None:
        """Send the state after ``d``'s update to every rank that catches up at ``d``."""
        from mpi4py import MPI

        reqs = [self.data.Isend(a, r, _TAG_STATE) for r in d.catchup for a in state]
        MPI.Request.Waitall(reqs)

    def _receive_state(self, d: co.Decision, state: Sequence[np.ndarray]) -> None:
        reqs = [self.data.Irecv(a, d.server, _TAG_STATE) for a in state]
        poll_wait(reqs, timeout=self.timeout, what=f"rank {self.rank} catching up from rank {d.server}",
                  missing=lambda: [d.server])

    # -- the protocol, piece by piece (the trainer's strategy uses these) -----------------------------------------
    def decide(self) -> co.Decision:
        """Announce that the gradient of step :attr:`version` is ready; return the decision that concerns us.

        That is the step's decision when this rank is a contributor, otherwise the first later decision (or
        flush) naming it for catch-up; decisions in between are recorded and skipped.
        """
        t = self.version
        if self.p == 1:
            d = co.Decision(co.NORMAL, t, 0, (0,), (t,), ())
            self.decisions.append(d)
            return d
        self._phase("wait")
        t0 = time.time()
        sreq, _msg = self._announce(co.READY, t)
        while True:
            d = self._next_decision(f"decision of step {t}")
            if self.rank in d.contributors or self.rank in d.catchup:
                break
        sreq.Wait()
        self._span("wait", t0, t, decided=d.step)
        return d

    def role(self, d: co.Decision) -> str:
        """``contributor``, ``stale`` (late gradient added, then catch up) or ``late`` (gradient dropped)."""
        if self.rank in d.catchup:
            return "stale" if self.rank in d.contributors else "late"
        return "contributor"

    def finish(self, d: co.Decision, state: Sequence[np.ndarray]) -> None:
        """After the update (contributors) serve the late ranks, or (late ranks) receive the state in place."""
        if self.rank in d.catchup:
            self._phase("catchup")
            t0 = time.time()
            self._receive_state(d, state)
            self._span("catchup", t0, self.version, server=d.server, resumed_at=_next_version(d))
        elif self.rank == d.server and d.catchup:
            t0 = time.time()
            self._serve(d, state)
            self._span("serve", t0, self.version, to=list(d.catchup))
        self.version = _next_version(d)

    def sync(self, state: Sequence[np.ndarray], final: bool = False) -> None:
        """Bring every rank to the same step (collective): late ranks receive ``state`` from a synced rank.

        Call it on every rank before anything that needs all ranks (evaluation, a checkpoint, the result) and,
        with ``final=True``, once at the end (it also stops the coordinator thread). A rank still inside
        :meth:`step` waiting for catch-up returns from it with the synced state and must then reach the same
        synchronisation point (it has skipped the steps in between).
        """
        if self._closed:
            return
        self._closed = final
        if self.p == 1:
            if final:
                self._free()
            return
        self._phase("wait")
        t0 = time.time()
        sreq, _msg = self._announce(co.FINAL if final else co.SYNC, self.version)
        while True:
            d = self._next_decision("synchronisation point")
            if d.kind == co.SYNCED:
                break
            if d.kind == co.FLUSH and d.server == self.rank:
                self._serve(d, state)
        sreq.Wait()
        self._span("sync", t0, self.version, lane="wait")
        if final:
            if self.coordinator is not None:
                self.coordinator.join()
            self._free()

    def _free(self) -> None:
        for c in self._subcomms.values():  # every member has passed the final sync: nothing is in flight
            c.Free()
        self._subcomms.clear()
        self.ctrl.Free()
        self.data.Free()

    def close(self, state: Sequence[np.ndarray]) -> None:
        """The final :meth:`sync`."""
        self.sync(state, final=True)

    # -- all of it for a plain loop -----------------------------------------------------------------------------
    def step(self, grad: np.ndarray, apply: Callable[[np.ndarray], None], state: Sequence[np.ndarray]) -> StepRecord:
        """Contribute ``grad`` (computed at step :attr:`version`) if among the first p - b, then update.

        Args:
            grad: this rank's flat, contiguous gradient; a contributor's is averaged in place.
            apply: ``apply(avg_grad)`` performs the optimizer update in place on the state arrays.
            state: every replicated array (parameters, optimizer buffers), contiguous, identical shapes on all
                ranks; a late rank receives them in place from the step's server.

        Returns the :class:`StepRecord`; :attr:`version` is then the step to compute next (it jumps forward on
        a rank that was late).
        """
        if self._closed:
            raise RuntimeError("BackupWorkers.step() after close()")
        t = self.version
        if self.p == 1:
            d = self.decide()
            apply(grad)
            self.version = t + 1
            rec = StepRecord(t, d, "contributor", t + 1, 0.0, 0.0, 0.0)
            self.records.append(rec)
            return rec
        t0 = time.time()
        d = self.decide()
        wait_s = time.time() - t0
        comm_s = catchup_s = 0.0
        role = self.role(d)
        if self.rank in d.contributors:
            self._phase("comm")
            t1 = time.time()
            self.reduce(grad, self.subcomm(d.contributors))
            comm_s = time.time() - t1
            self._span("comm", t1, t, contributors=len(d.contributors))
        if role == "contributor":
            self._phase("update")
            t2 = time.time()
            apply(grad)
            self._span("update", t2, t)
        t3 = time.time()
        self.finish(d, state)
        if role != "contributor":
            catchup_s = time.time() - t3
        rec = StepRecord(t, d, role, self.version, wait_s, comm_s, catchup_s)
        self.records.append(rec)
        return rec

    def contributor_counts(self) -> Dict[int, int]:
        """How many decided steps each rank contributed to (from this rank's record of every decision)."""
        counts = {r: 0 for r in range(self.p)}
        for d in self.decisions:
            for r in d.contributors:
                counts[r] += 1
        return counts


def _next_version(d: co.Decision) -> int:
    # a flush (at a synchronisation point) carries the state at the open step itself: no update follows it
    return d.step if d.kind == co.FLUSH else d.step + 1
