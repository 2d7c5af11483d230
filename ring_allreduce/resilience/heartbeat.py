"""Failure detector and stall inspector: a daemon thread per rank exchanging heartbeats with rank 0.

Why a thread on a duplicated communicator: the main thread may sit in a blocking collective that a dead rank
will never join; only another thread can notice that and end the job. Heartbeats travel on ``comm.Dup()`` so
they never match the training's messages, as small nonblocking ``Isend``/``Irecv`` polled with ``Test`` (mpi4py
initialises MPI with ``MPI_THREAD_MULTIPLE``, which this needs). The topology is a star: every rank beats to
rank 0 and rank 0 beats to every rank, O(p) messages per interval.

* Failure: a rank that misses heartbeats for ``timeout`` seconds (dead, exited early, or whole process stopped)
  is named in an error on stderr and the job is aborted (``MPI_Abort``), so nobody waits forever. Rank 0
  watches every rank; the others watch rank 0 (a dead rank 0 is reported by all).
* Stalls: each heartbeat carries the sender's step and phase (set by :meth:`Heartbeat.progress`), so rank 0 knows
  who is where; when a rank has waited in a collective for ``stall_timeout`` seconds, rank 0 prints which ranks
  have not arrived (:func:`.stall.find_stall`), again every ``stall_timeout`` while the stall lasts, and with
  ``stall_shutdown`` > 0 aborts after that long (a rank that is alive but stuck, e.g. its main thread hangs).
* Shutdown: :meth:`stop` sends a last "bye" beat so a rank that finished normally is not reported as dead.
"""
from __future__ import annotations

import atexit
import sys
import threading
import time
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from .stall import RankFailureError, find_stall

PHASES = ("idle", "compute", "wait", "comm", "update", "catchup", "checkpoint", "eval", "compress", "done")
_CODE = {p: i for i, p in enumerate(PHASES)}
_BEAT, _BYE = 0, 1
_TAG = 0x4EB


class Heartbeat:
    """Run the heartbeat thread for this rank (context manager: ``with Heartbeat(comm, ...) as hb:``).

    Args:
        comm: the job's communicator (duplicated internally; the constructor is collective).
        interval: seconds between beats.
        timeout: a peer silent for this long is declared failed (must exceed ``interval``).
        stall_timeout: rank 0 reports stalled collectives after this many seconds (None: never).
        stall_shutdown: abort after a stall has lasted this long (0 or None: only report).
        on_failure: ``fn(message, ranks)`` called instead of the default print-and-``MPI_Abort`` (tests).
        stream: where reports go (default ``sys.stderr``).
    """

    def __init__(self, comm, interval: float = 1.0, timeout: float = 10.0, stall_timeout: Optional[float] = 60.0,
                 stall_shutdown: Optional[float] = 0.0, on_failure: Optional[Callable] = None, stream=None) -> None:
        from mpi4py import MPI

        if not interval > 0:
            raise ValueError(f"heartbeat interval must be > 0 s, got {interval}")
        if not timeout > interval:
            raise ValueError(f"heartbeat timeout ({timeout} s) must exceed the interval ({interval} s)")
        if MPI.Query_thread() < MPI.THREAD_MULTIPLE and comm.Get_size() > 1:
            raise RuntimeError("the heartbeat thread needs MPI_THREAD_MULTIPLE (mpi4py's default); "
                               "do not set mpi4py.rc.thread_level lower, or disable the heartbeat")
        self.comm = comm.Dup()
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        # who runs where, so a failure names the host too (a cut link or a dead node loses all its ranks)
        self.hosts = self.comm.allgather(MPI.Get_processor_name()) if self.size > 1 else [MPI.Get_processor_name()]
        self.interval, self.timeout = float(interval), float(timeout)
        self.stall_timeout = stall_timeout if stall_timeout and stall_timeout > 0 else None
        self.stall_shutdown = stall_shutdown if stall_shutdown and stall_shutdown > 0 else None
        self.on_failure = on_failure
        self.stream = stream
        self._state: Tuple[int, int, float] = (0, _CODE["idle"], time.monotonic())
        self._stop = threading.Event()
        self._silent = False
        self._thread: Optional[threading.Thread] = None
        self.failed: list = []
        self.stalls: list = []  # stall messages printed (rank 0)
        #: rank -> its role in words (e.g. "pipeline stage 1 of replica 0"), named next to a failed rank
        self.roles: dict = {}

    # -- main-thread API -------------------------------------------------------------------------------------
    def progress(self, step: int, phase: str) -> None:
        """Record this rank's step and phase (cheap: one tuple assignment); sent with the next beat."""
        code = _CODE.get(phase)
        if code is None:
            raise ValueError(f"unknown phase {phase!r}; valid: {', '.join(PHASES)}")
        st = self._state
        if st[0] != step or st[1] != code:
            self._state = (int(step), code, time.monotonic())

    def start(self) -> "Heartbeat":
        if self.size > 1 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.rank}", daemon=True)
            self._thread.start()
            atexit.register(self._at_exit)  # runs before mpi4py finalizes MPI
        return self

    def _at_exit(self) -> None:
        """Stop the thread *without* a bye: exiting while still beating means training did not end normally
        (an exception, an early exit), and the other ranks must notice this rank's silence and abort."""
        self._silent = True
        self.stop()

    def stop(self) -> None:
        """Send a last "bye" beat and stop the thread (call on every rank when training ends normally)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            atexit.unregister(self._at_exit)

    def __enter__(self) -> "Heartbeat":
        return self.start()

    def __exit__(self, etype, *exc) -> None:
        if etype is not None:  # leaving on an exception: no bye, so the others notice and abort
            self._silent = True
        self.stop()

    # -- the thread ------------------------------------------------------------------------------------------
    def _peers(self):
        return list(range(1, self.size)) if self.rank == 0 else [0]

    def _run(self) -> None:
        comm = self.comm
        peers = self._peers()
        bufs = {r: np.zeros(4, dtype=np.int64) for r in peers}
        reqs = {r: comm.Irecv(bufs[r], r, _TAG) for r in peers}
        now = time.monotonic()
        last_seen: Dict[int, float] = {r: now for r in peers}
        table: Dict[int, Tuple[int, str, float]] = {}
        gone = set()
        sends = []
        next_beat = now
        next_stall_report = None
        stall_began = None
        poll = min(0.05, self.interval / 4)
        while True:
            now = time.monotonic()
            stopping = self._stop.is_set()
            if stopping and self._silent:
                break
            if now >= next_beat or stopping:
                step, code, since = self._state
                kind = _BYE if stopping else _BEAT
                out = np.array([kind, step, code, int((now - since) * 1000)], dtype=np.int64)
                sends = [s for s in sends if not s.Test()]
                if len(sends) < 64 * len(peers):  # a dead peer's unreceived beats must not pile up forever
                    sends += [comm.Isend(out, r, _TAG) for r in peers if r not in gone]
                next_beat = now + self.interval
            if stopping:
                break
            for r in peers:
                while r not in gone and reqs[r].Test():
                    kind, step, code, age_ms = (int(v) for v in bufs[r])
                    last_seen[r] = now
                    table[r] = (step, PHASES[code], now - age_ms / 1000.0)
                    if kind == _BYE:
                        gone.add(r)
                        break
                    reqs[r] = comm.Irecv(bufs[r], r, _TAG)
            silent = sorted(r for r in peers if r not in gone and now - last_seen[r] > self.timeout)
            if silent:
                self._fail(silent, now - min(last_seen[r] for r in silent), table)
                return
            if self.rank == 0 and self.stall_timeout is not None:
                step, code, since = self._state
                table[0] = (step, PHASES[code], since)
                live = {r: v for r, v in table.items() if r not in gone}
                stall = find_stall(live, now, self.stall_timeout)
                if stall is None:
                    next_stall_report, stall_began = None, None
                else:
                    if stall_began is None:
                        stall_began = now - stall.waited_s
                    if next_stall_report is None or now >= next_stall_report:
                        msg = stall.message()
                        self.stalls.append(msg)
                        self._print(msg)
                        next_stall_report = now + self.stall_timeout
                    if self.stall_shutdown is not None and now - stall_began >= self.stall_shutdown:
                        self._fail(stall.missing or stall.waiting, now - stall_began, table,
                                   reason=f"stalled for {now - stall_began:.1f} s (stall shutdown "
                                          f"{self.stall_shutdown:g} s)")
                        return
            self._stop.wait(poll)
        deadline = time.monotonic() + 1.0  # the bye is tiny (sent eagerly); do not hang on a dead peer
        while sends and time.monotonic() < deadline:
            sends = [s for s in sends if not s.Test()]
            time.sleep(0.001)
        for r in peers:
            if r not in gone:
                reqs[r].Cancel()
                reqs[r].Wait()

    def _print(self, msg: str) -> None:
        stream = self.stream or sys.stderr
        stream.write(msg + "\n")
        stream.flush()

    def _fail(self, ranks, silent_s, table, reason=None) -> None:
        where = []
        for r in ranks:
            if r in table:
                st, ph, _ = table[r]
                where.append(f"rank {r} last seen at step {st} in {ph}")
        roles = [f"rank {r} is {self.roles[r]}" for r in ranks if r in self.roles]
        where = roles + where
        why = reason or (f"sent no heartbeat for {silent_s:.1f} s (timeout {self.timeout:g} s): "
                         "it died, exited early or hangs")
        on = {}
        for r in ranks:
            on.setdefault(self.hosts[r], []).append(r)
        hosts = "; ".join(f"host {h}: rank(s) {rs}" for h, rs in on.items())
        msg = (f"ring-allreduce: rank {self.rank} reports rank(s) {list(ranks)} failed: {why}"
               + (f" ({'; '.join(where)})" if where else "") + f" [{hosts}]; aborting the job")
        self.failed = list(ranks)
        if self.on_failure is not None:
            self.on_failure(msg, list(ranks))
            return
        self._print(msg)
        from ..abort import abort

        abort(self.comm, 3)


_early: Optional[Heartbeat] = None


def start_early(comm, interval: float, timeout: float, stall_timeout: Optional[float] = 60.0,
                stall_shutdown: Optional[float] = 0.0) -> Optional[Heartbeat]:
    """Start the job's heartbeat before start-up work (data loading, model build, parameter broadcast).

    A rank stopped or killed during start-up would otherwise leave the others waiting in the first collective.
    :func:`adopt` hands this heartbeat to the training callback with the same settings. Collective (``Dup``);
    returns None at p = 1 or with ``interval`` 0 (no detector).
    """
    global _early
    if not interval or comm.Get_size() < 2:
        return None
    _early = Heartbeat(comm, interval, timeout, stall_timeout, stall_shutdown).start()
    _early.progress(0, "idle")
    return _early


def adopt(comm, interval: float, timeout: float, stall_timeout: Optional[float] = 60.0,
          stall_shutdown: Optional[float] = 0.0) -> Heartbeat:
    """The heartbeat :func:`start_early` started with these settings (once), else a new one (collective)."""
    global _early
    hb, _early = _early, None
    stall = stall_timeout if stall_timeout and stall_timeout > 0 else None
    shutdown = stall_shutdown if stall_shutdown and stall_shutdown > 0 else None
    if hb is not None and hb._thread is not None and (hb.interval, hb.timeout, hb.stall_timeout,
                                                      hb.stall_shutdown) == (interval, timeout, stall, shutdown):
        return hb
    if hb is not None:
        hb.stop()
    return Heartbeat(comm, interval, timeout, stall_timeout, stall_shutdown).start()


def failure_error(message: str, ranks) -> RankFailureError:
    """Build the exception a caller may raise from an ``on_failure`` callback."""
    return RankFailureError(message, ranks)
