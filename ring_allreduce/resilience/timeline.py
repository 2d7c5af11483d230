"""Per-rank Chrome-trace timeline (open in https://ui.perfetto.dev or chrome://tracing).

Each rank records complete events (``"ph": "X"``) with ``pid = rank`` and one ``tid`` lane per kind of phase
(compute, wait, comm, compression, ...), so Perfetto shows one row per rank and, inside it, one track per phase.
Timestamps are wall-clock microseconds (``time.time_ns``) so the ranks of one machine line up without a clock
exchange; across machines they are as aligned as the hosts' clocks (NTP: typically well under a millisecond).

Output (``--timeline PATH``): at the end rank 0 gathers every rank's events and writes one merged JSON file,
atomically (temporary file + ``os.replace``), with ``process_name`` metadata naming ``rank K``. A rank that dies
takes its events with it; :meth:`Timeline.write_local` writes one rank's events alone (``PATH.rankK.json``).
"""
from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from typing import Dict, List, Optional

from .._io import write_json

#: lane (tid) of each known phase; unknown names get lanes after these
LANES = {"step": 0, "compute": 1, "straggle": 2, "wait": 3, "comm": 4, "buckets": 5, "compress": 6,
         "update": 7, "catchup": 8, "checkpoint": 9}


def now_us() -> float:
    """Wall-clock microseconds (shared by the ranks of one host)."""
    return time.time_ns() / 1000.0


class Timeline:
    """Collect one rank's phase events; cheap enough to leave on (a list append per event).

    Args:
        rank: this rank (the trace's ``pid``).
        enabled: when False every method is a no-op, so callers need no ``if``.
        max_events: stop recording after this many events (a long run must not grow memory without bound).
    """

    __slots__ = ("rank", "enabled", "events", "max_events", "dropped", "_lanes", "_lock")

    def __init__(self, rank: int = 0, enabled: bool = True, max_events: int = 1_000_000) -> None:
        self.rank, self.enabled, self.max_events = int(rank), bool(enabled), int(max_events)
        self.events: List[dict] = []
        self.dropped = 0
        self._lanes: Dict[str, int] = dict(LANES)
        self._lock = threading.Lock()  # a communication thread may record concurrently with the main thread

    def lane(self, name: str) -> int:
        if name not in self._lanes:
            self._lanes[name] = max(self._lanes.values()) + 1
        return self._lanes[name]

    def add(self, name: str, start_us: float, dur_us: float, step: Optional[int] = None, lane: Optional[str] = None,
            **args) -> None:
        """Record a complete event ``name`` from ``start_us`` lasting ``dur_us`` on the lane of ``lane or name``."""
        if not self.enabled:
            return
        ev = {"name": name, "cat": lane or name, "ph": "X", "ts": round(start_us, 3), "dur": round(max(dur_us, 0.0), 3),
              "pid": self.rank, "tid": self.lane(lane or name)}
        if step is not None:
            args["step"] = int(step)
        if args:
            ev["args"] = args
        with self._lock:
            if len(self.events) >= self.max_events:
                self.dropped += 1
                return
            self.events.append(ev)

    def instant(self, name: str, step: Optional[int] = None, **args) -> None:
        """Record an instant event (a marker), e.g. a step this rank was left out of."""
        if not self.enabled:
            return
        ev = {"name": name, "ph": "i", "s": "p", "ts": round(now_us(), 3), "pid": self.rank, "tid": 0}
        if step is not None:
            args["step"] = int(step)
        if args:
            ev["args"] = args
        with self._lock:
            self.events.append(ev)

    @contextmanager
    def span(self, name: str, step: Optional[int] = None, lane: Optional[str] = None, **args):
        """Time the ``with`` body as event ``name``."""
        if not self.enabled:
            yield
            return
        t0 = now_us()
        try:
            yield
        finally:
            self.add(name, t0, now_us() - t0, step, lane, **args)

    def _metadata(self) -> List[dict]:
        meta = [{"name": "process_name", "ph": "M", "pid": self.rank, "tid": 0, "args": {"name": f"rank {self.rank}"}},
                {"name": "process_sort_index", "ph": "M", "pid": self.rank, "tid": 0,
                 "args": {"sort_index": self.rank}}]
        seen = {}
        for k, v in self._lanes.items():
            seen.setdefault(v, k)
        for tid, lname in sorted(seen.items()):
            meta.append({"name": "thread_name", "ph": "M", "pid": self.rank, "tid": tid, "args": {"name": lname}})
        return meta

    def local_trace(self) -> List[dict]:
        """This rank's events plus its naming metadata."""
        with self._lock:
            return self._metadata() + list(self.events)

    def write_local(self, path: str) -> str:
        """Write this rank's events alone to ``path`` (atomically); return the path."""
        write_trace(path, self.local_trace(), {"rank": self.rank, "dropped_events": self.dropped})
        return path

    def gather_and_write(self, comm, path: str, root: int = 0) -> Optional[str]:
        """Gather every rank's events on ``root`` and write one merged trace there (collective over ``comm``)."""
        if not self.enabled:
            return None
        parts = comm.gather(self.local_trace(), root=root)
        dropped = comm.gather(self.dropped, root=root)
        if comm.Get_rank() != root:
            return None
        merged = [ev for part in parts for ev in part]
        write_trace(path, merged, {"ranks": comm.Get_size(), "dropped_events": sum(dropped)})
        return path


def write_trace(path: str, events: List[dict], other: Optional[dict] = None) -> None:
    """Write ``{"traceEvents": events, ...}`` to ``path`` atomically (no half-written file on a kill)."""
    doc = {"traceEvents": events, "displayTimeUnit": "ms"}
    if other:
        doc["otherData"] = other
    write_json(path, doc, indent=None, separators=(",", ":"))


def load(path: str) -> List[dict]:
    """Read a trace written by :func:`write_trace` and return its events (validating the basic shape)."""
    with open(path) as fh:
        doc = json.load(fh)
    events = doc["traceEvents"] if isinstance(doc, dict) else doc
    for ev in events:
        if ev.get("ph") == "X" and not all(k in ev for k in ("name", "ts", "dur", "pid", "tid")):
            raise ValueError(f"malformed complete event in {path}: {ev}")
    return events
