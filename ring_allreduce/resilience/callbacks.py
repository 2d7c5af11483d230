"""Trainer callbacks: straggler injection, the Chrome-trace timeline, the heartbeat, and a per-step clock.

Each is an object with some of the trainer's callback methods (see :mod:`ring_allreduce.train.trainer`); the
``train`` plugin (:mod:`.train_plugin`) appends them to ``trainer.callbacks`` from the command-line flags.
"""
from __future__ import annotations

import contextlib
import time
from typing import Optional

import numpy as np

from .heartbeat import PHASES, Heartbeat, adopt
from .straggle import Straggler
from .timeline import Timeline


def _lane(name: str):
    """Map a trainer phase name to (event name, lane): ``comm:bucket3`` -> (``bucket 3``, ``buckets``)."""
    if name.startswith("comm:bucket"):
        return "bucket " + name[len("comm:bucket"):], "buckets"
    head = name.split(":")[0]
    if head.startswith(("compress", "decompress", "encode", "decode")):
        return name, "compress"
    if head == "compute floor":
        return name, "straggle"
    if head in ("sync", "wait"):
        return name, "wait"
    if head == "serve":
        return name, "comm"
    return name, head


class StraggleCallback:
    """Sleep after backward on the ranks and steps the :class:`~.straggle.Straggler` picks."""

    name = "straggle"

    def __init__(self, straggler: Straggler):
        self.straggler = straggler

    def after_backward(self, trainer, step, seconds):
        t0 = time.perf_counter()
        if self.straggler.after_compute(step, seconds) > 0:
            # an injected slowdown, or only the padding every rank gets from --compute-floor
            name = "straggle" if self.straggler.last_factor > 1 else "compute floor"
            trainer.timer.record(name, t0, time.perf_counter(), total=False)


class TimelineCallback:
    """Record every timed phase of the trainer (and each step) into a :class:`~.timeline.Timeline`; rank 0
    writes the merged trace at the end of training."""

    name = "timeline"

    def __init__(self, path: str, rank: int):
        self.path = path
        self.timeline = Timeline(rank)
        # the trainer times phases with perf_counter; the trace needs wall-clock time to line the ranks up
        self._offset_us = (time.time() - time.perf_counter()) * 1e6
        self._step_t0 = None
        self._first_bucket = None
        self._codec_s = 0.0

    def on_step_begin(self, trainer, step):
        self._step_t0 = time.perf_counter()
        self._first_bucket = None

    def on_phase(self, trainer, step, name, t0, t1):
        ev, lane = _lane(name)
        self.timeline.add(ev, t0 * 1e6 + self._offset_us, (t1 - t0) * 1e6, step, lane)
        if lane == "buckets" and (self._first_bucket is None or t0 < self._first_bucket):
            self._first_bucket = t0

    def _codec(self, trainer, step):
        """Add the step's compression time (a compression hook's ``stats``: hook time not spent communicating).

        The hook reports totals, not spans, so the event is placed at the start of the step's first bucket and
        lasts the step's summed compress + decompress time.
        """
        stats = getattr(trainer.optimizer.hook_state, "stats", None)
        if not isinstance(stats, dict) or "hook_s" not in stats or "comm_s" not in stats:
            return
        total = stats["hook_s"] - stats["comm_s"]
        delta, self._codec_s = total - self._codec_s, total
        if delta > 0 and self._first_bucket is not None:
            self.timeline.add("compress+decompress", self._first_bucket * 1e6 + self._offset_us, delta * 1e6, step,
                              "compress", summed=True)

    def on_step_end(self, trainer, step, result):
        if self._step_t0 is None:
            return
        self._codec(trainer, step)
        t0 = self._step_t0
        args = {}
        if result.contributors is not None:
            args["contributors"] = list(result.contributors)
            if trainer.rank not in result.contributors:
                args["left_out"] = True
        name = "step" if result.rows or result.contributors is None else "step (left out)"
        self.timeline.add(name, t0 * 1e6 + self._offset_us, (time.perf_counter() - t0) * 1e6, step, "step", **args)

    def on_train_end(self, trainer, result):
        self.timeline.gather_and_write(trainer.comm, self.path)


class HeartbeatCallback:
    """Run a :class:`~.heartbeat.Heartbeat` for the length of training and tell it each phase as it *begins*.

    The trainer reports phases when they end; to know who is inside a collective right now this callback wraps
    the trainer's ``timer.phase`` context manager (an instance attribute, the trainer's file is untouched).
    """

    name = "heartbeat"

    def __init__(self, interval: float, timeout: float, stall_timeout: Optional[float], stall_shutdown: float):
        self.settings = (interval, timeout, stall_timeout, stall_shutdown)
        self.hb: Optional[Heartbeat] = None

    def on_train_begin(self, trainer):
        interval, timeout, stall_timeout, stall_shutdown = self.settings
        # the train command starts the heartbeat before start-up work; take it over (or start one here)
        self.hb = adopt(trainer.comm, interval, timeout, stall_timeout, stall_shutdown)
        timer, hb = trainer.timer, self.hb
        inner = timer.phase

        @contextlib.contextmanager
        def phase(name):
            head = name.split(":")[0]
            hb.progress(trainer.global_step, head if head in PHASES else "compute")
            with inner(name):
                yield

        timer.phase = phase

    def on_step_begin(self, trainer, step):
        self.hb.progress(step, "compute")

    def on_train_end(self, trainer, result):
        self.hb.progress(trainer.global_step, "done")
        self.hb.stop()


class StepClock:
    """Wall time between consecutive step ends on this rank (the job's pace, seen from a rank that keeps up)."""

    name = "stepclock"

    def __init__(self):
        self.ends = []

    def on_train_begin(self, trainer):
        self.ends = [time.perf_counter()]

    def on_step_end(self, trainer, step, result):
        self.ends.append(time.perf_counter())

    def summary(self, skip: int = 1) -> dict:
        """Median, p99 and mean step time in seconds, leaving out the first ``skip`` (warm-up) steps."""
        d = np.diff(np.asarray(self.ends))[skip:]
        if d.size == 0:
            return {}
        return {"median_s": float(np.median(d)), "p99_s": float(np.percentile(d, 99)), "mean_s": float(d.mean()),
                "steps": int(d.size)}
