"""The pure part of load balancing: rows per rank from speeds, and a smoothed per-sample time.

Everything here is a deterministic function of its inputs, so ranks that feed it the same (allgathered) numbers
derive the same split without another message.
"""
from __future__ import annotations

from typing import Optional

import numpy as np


def split_counts(n: int, weights) -> np.ndarray:
    """Rows per rank for a global batch of ``n`` rows, proportional to ``weights`` (largest remainder).

    Ties in the remainder go to the lower rank. When ``n >= p`` every rank gets at least one row, so a rank's speed
    keeps being measured (the row is taken from the rank with the most).
    """
    w = np.asarray(weights, dtype=np.float64)
    p = w.size
    if p == 0 or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError(f"weights must be finite and > 0, got {list(w)}")
    exact = n * w / w.sum()
    counts = np.floor(exact).astype(np.int64)
    left = int(n - counts.sum())
    order = np.argsort(-(exact - counts), kind="stable")  # largest remainder first, lower rank on ties
    counts[order[:left]] += 1
    if n >= p:
        for r in np.nonzero(counts == 0)[0]:
            counts[int(np.argmax(counts))] -= 1
            counts[r] = 1
    return counts


def bounds(counts) -> np.ndarray:
    """Start offsets of each rank's contiguous share, plus the end: ``[0, c0, c0 + c1, ..., n]``."""
    return np.concatenate(([0], np.cumsum(counts))).astype(np.int64)


class SpeedEstimate:
    """Exponentially smoothed seconds per sample of this rank's compute (``alpha``: weight of the newest step)."""

    __slots__ = ("alpha", "value")

    def __init__(self, alpha: float = 0.3):
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {alpha}")
        self.alpha = float(alpha)
        self.value: Optional[float] = None

    def observe(self, seconds: float, rows: int) -> None:
        """Add one step's compute time over ``rows`` rows (a step without rows tells nothing and is skipped)."""
        if rows <= 0 or not seconds > 0:
            return
        x = seconds / rows
        self.value = x if self.value is None else (1 - self.alpha) * self.value + self.alpha * x
