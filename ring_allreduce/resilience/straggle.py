"""Straggler injection: slow chosen ranks' compute by a factor, always or with a per-step probability.

Specs (``--straggle``, repeatable):

* ``RANK:FACTOR`` - rank ``RANK`` is ``FACTOR`` times slower every step;
* ``RANK:FACTOR:PROB`` - rank ``RANK`` is slowed with probability ``PROB`` each step, drawn from a generator
  seeded with ``(seed, rank)``, so a run is reproducible and ranks draw independently;
* ``host:NAME:FACTOR[:PROB]`` - every rank on host ``NAME`` (``MPI.Get_processor_name()``) is slowed, each
  drawing like a ``RANK`` spec: a slow node (e.g. one host of the emulated cluster);
* ``random:FACTOR:PROB`` - with probability ``PROB`` each step, one rank drawn uniformly is slowed; the draw
  comes from a generator seeded with ``seed`` alone, identical on every rank, so all ranks agree on who is slow.

A slowed rank sleeps ``(FACTOR - 1) * compute_s`` after computing, where ``compute_s`` is the measured compute
time of the step (padded to ``floor_s`` first when a compute floor is set: the digits model computes a step in
about a millisecond, too little to make straggling visible against communication; a floor emulates a heavier
model without burning the machine's two cores). Sleeping, not spinning, keeps the injected delay from stealing
CPU from the other ranks on an oversubscribed machine.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np


@dataclass(frozen=True)
class StraggleSpec:
    """One parsed ``--straggle`` value; ``rank`` is None for the random mode."""

    rank: Optional[int]
    factor: float
    prob: float = 1.0
    host: Optional[str] = None  # a host spec: rank is None and host names the node

    def __str__(self) -> str:
        who = f"host:{self.host}" if self.host is not None else "random" if self.rank is None else str(self.rank)
        return f"{who}:{self.factor:g}:{self.prob:g}"


def parse(spec: str) -> StraggleSpec:
    """Parse ``RANK:FACTOR[:PROB]``, ``host:NAME:FACTOR[:PROB]`` or ``random:FACTOR:PROB``.

    Raises ``ValueError`` naming the bad part.
    """
    parts = str(spec).strip().split(":")
    if parts[0].strip().lower() == "host":
        if len(parts) not in (3, 4) or not parts[1]:
            raise ValueError(f"--straggle {spec!r}: expected host:NAME:FACTOR[:PROB]")
        try:
            s = parse(":".join(["0"] + parts[2:]))  # the FACTOR[:PROB] checks of a rank spec
        except ValueError as e:
            raise ValueError(f"--straggle {spec!r}: {str(e).split(': ', 1)[1]}") from None
        return StraggleSpec(None, s.factor, s.prob, parts[1])
    if len(parts) not in (2, 3):
        raise ValueError(f"--straggle {spec!r}: expected RANK:FACTOR[:PROB] or random:FACTOR:PROB")
    who, factor_s = parts[0].strip().lower(), parts[1]
    try:
        factor = float(factor_s)
        prob = float(parts[2]) if len(parts) == 3 else 1.0
    except ValueError:
        raise ValueError(f"--straggle {spec!r}: FACTOR and PROB must be numbers") from None
    if not factor >= 1.0:
        raise ValueError(f"--straggle {spec!r}: FACTOR must be >= 1 (a slowdown), got {factor_s}")
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"--straggle {spec!r}: PROB must be in [0, 1], got {prob}")
    if who == "random":
        if len(parts) != 3:
            raise ValueError(f"--straggle {spec!r}: the random mode needs a probability: random:FACTOR:PROB")
        return StraggleSpec(None, factor, prob)
    try:
        rank = int(who)
    except ValueError:
        raise ValueError(f"--straggle {spec!r}: RANK must be an integer or 'random'") from None
    if rank < 0:
        raise ValueError(f"--straggle {spec!r}: RANK must be >= 0")
    return StraggleSpec(rank, factor, prob)


class Straggler:
    """Decide, per step, how much extra time this rank sleeps after its compute (seeded, reproducible).

    Args:
        specs: parsed specs (or strings); an empty list injects nothing (but still applies ``floor_s``).
        rank, size: this rank and the job size; a spec naming a rank >= size is an error on every rank.
        seed: base seed; per-rank draws use ``(seed, rank)``, the random mode uses ``seed`` on every rank.
        floor_s: pad every rank's compute to at least this many seconds (emulates a heavier model).
        sleep: the sleeping function (tests pass a fake).
        host: this rank's host name, matched against ``host:NAME`` specs.
    """

    __slots__ = ("specs", "rank", "size", "floor_s", "_own", "_shared", "_sleep", "injected_s", "slowed_steps",
                 "last_factor", "host")

    def __init__(self, specs: Sequence, rank: int, size: int, seed: int = 0, floor_s: float = 0.0, sleep=time.sleep,
                 host: str = ""):
        self.specs: List[StraggleSpec] = [s if isinstance(s, StraggleSpec) else parse(s) for s in specs or ()]
        for s in self.specs:
            if s.rank is not None and s.rank >= size:
                raise ValueError(f"--straggle {s}: rank {s.rank} does not exist with {size} rank(s)")
        if floor_s < 0:
            raise ValueError(f"compute floor must be >= 0 s, got {floor_s}")
        self.rank, self.size, self.floor_s, self.host = rank, size, float(floor_s), host
        self._own = np.random.default_rng([int(seed), 0x57A6, rank])
        self._shared = np.random.default_rng([int(seed), 0x57A6, 1 << 20])
        self._sleep = sleep
        self.injected_s = 0.0
        self.slowed_steps = 0
        self.last_factor = 1.0

    @property
    def active(self) -> bool:
        return bool(self.specs) or self.floor_s > 0

    def factor(self, step: int) -> float:
        """Draw this step's slowdown factor for this rank (1.0 = not slowed); call once per step on every rank.

        Every rank draws from every generator each step, whether or not it is concerned, so the shared draw of
        the random mode stays in step across ranks.
        """
        f = 1.0
        for s in self.specs:
            if s.host is not None:
                hit = s.prob >= 1.0 or self._own.random() < s.prob
                if hit and s.host == self.host:
                    f = max(f, s.factor)
            elif s.rank is None:
                hit = self._shared.random() < s.prob
                victim = int(self._shared.integers(self.size))
                if hit and victim == self.rank:
                    f = max(f, s.factor)
            else:
                hit = s.prob >= 1.0 or self._own.random() < s.prob
                if hit and s.rank == self.rank:
                    f = max(f, s.factor)
        return f

    def delay(self, step: int, compute_s: float) -> float:
        """Return the seconds to sleep after a compute of ``compute_s`` at ``step`` (floor padding included)."""
        base = max(float(compute_s), self.floor_s)
        f = self.last_factor = self.factor(step)
        if f > 1.0:
            self.slowed_steps += 1
        return max(0.0, base * f - float(compute_s))

    def after_compute(self, step: int, compute_s: float) -> float:
        """Sleep this step's injected delay; return it (seconds)."""
        d = self.delay(step, compute_s)
        if d > 0:
            self._sleep(d)
            self.injected_s += d
        return d
