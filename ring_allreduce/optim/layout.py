"""The bucket layout of a parameter list, and its agreement across ranks at construction.

Parameters are grouped in the given order into buckets of about ``bucket_mb`` MiB; a bucket holds one dtype, so a
dtype change closes it. What shapes messages (names, shapes, dtypes, order, and the optimizer's settings) is
compared across ranks once, before any gradient moves: a difference raises the same :class:`MismatchError` on
every rank, naming the first differing parameter and the ranks on each side.
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np

from ..agreement import raise_differences
from ..errors import MismatchError


class Layout:
    """Parameter specs ``(name, shape, dtype)`` and their buckets: ``buckets[k] = (first, stop)`` spec indices."""

    __slots__ = ("names", "shapes", "dtypes", "sizes", "offsets", "buckets")

    def __init__(self, specs: Sequence, bucket_mb: float):
        self.names = [str(n) for n, _, _ in specs]
        self.shapes = [tuple(int(d) for d in s) for _, s, _ in specs]
        self.dtypes = [np.dtype(d) for _, _, d in specs]
        self.sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        limit = float(bucket_mb) * 2 ** 20
        self.buckets: List[tuple] = []
        self.offsets = []  # offset of each parameter inside its bucket (elements)
        first, nbytes = 0, 0
        for i, (n, dt) in enumerate(zip(self.sizes, self.dtypes)):
            if i > first and dt != self.dtypes[first]:
                self.buckets.append((first, i))
                first, nbytes = i, 0
            self.offsets.append(nbytes // dt.itemsize)
            nbytes += n * dt.itemsize
            if limit <= 0:
                continue
            if nbytes >= limit:
                self.buckets.append((first, i + 1))
                first, nbytes = i + 1, 0
        if first < len(self.sizes):
            self.buckets.append((first, len(self.sizes)))

    def entries(self) -> list:
        return [f"{n} {list(s)} {d.name}" for n, s, d in zip(self.names, self.shapes, self.dtypes)]

    def __len__(self) -> int:
        return len(self.names)


def agree(comm, layout: Layout, settings: dict, problems=None) -> None:
    """Collective: raise the same error on every rank unless every rank's settings and layout are the same.

    ``problems``: this rank's own invalid arguments (a list of strings), reported as an ``ArgumentError`` naming
    the rank on every rank.
    """
    mine = layout.entries()
    everyone = comm.allgather((settings, problems or None, mine))
    raise_differences([(s, pr) for s, pr, _ in everyone], list(settings), "optimizer settings")
    lists = [e for _, _, e in everyone]
    if all(e == lists[0] for e in lists):
        return
    n = max(len(e) for e in lists)
    i = next(k for k in range(n) if len({e[k] if k < len(e) else None for e in lists}) > 1)
    groups: dict = {}
    for r, e in enumerate(lists):
        groups.setdefault(e[i] if i < len(e) else "(none)", []).append(r)
    counts = sorted({len(e) for e in lists})
    what = "; ".join(f"{v} on rank(s) {rs}" for v, rs in groups.items())
    raise MismatchError(f"ranks disagree on the model: parameter #{i} is {what}"
                        + (f" (parameter counts {counts})" if len(counts) > 1 else ""),
                        {"parameter": {r: (e[i] if i < len(e) else None) for r, e in enumerate(lists)}})
