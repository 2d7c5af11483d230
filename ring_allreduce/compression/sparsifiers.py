"""Sparsifying compressors: ``randomk`` (shared indices: summable) and ``topk`` (per-rank indices: allgather)."""
from __future__ import annotations

import math

import numpy as np

from .base import Compressor, Fields, rng_from_array, rng_to_array


def _k(ratio: float, n: int) -> int:
    return min(n, max(1, math.ceil(ratio * n)))


def _check_ratio(name, ratio):
    if not (isinstance(ratio, (int, float)) and 0 < ratio <= 1):
        raise ValueError(f"{name} compression_ratio must be in (0, 1] (the fraction of elements kept), got {ratio!r}")
    return float(ratio)


class RandomK(Compressor):
    """Keep ``ceil(ratio * n)`` elements at indices drawn without replacement from a generator seeded identically
    on every rank, so every rank keeps the same indices and the kept values can be summed on the ring.

    Unscaled (biased but contractive), which is the form that converges with error feedback.
    """

    name = "randomk"
    summable = True

    def __init__(self, *, ratio: float = 0.01, **kw):
        super().__init__(**kw)
        self.ratio = _check_ratio(self.name, ratio)
        self.rng = np.random.default_rng(list(self.seed))  # the same seed on every rank: indices must agree

    def config(self):
        return {"name": self.name, "ratio": self.ratio, "seed": list(self.seed)}

    def payload_spec(self, layout):
        return [(_k(self.ratio, layout.size), np.dtype(np.float32))]

    def compress(self, x, layout):
        n = x.size
        idx = np.sort(self.rng.choice(n, size=_k(self.ratio, n), replace=False)).astype(np.int32)
        return np.ascontiguousarray(self.kernels.gather(x, idx), dtype=np.float32), (n, idx)

    def decompress(self, payload, ctx, out=None, add=False):
        n, idx = ctx
        return self.kernels.scatter(idx, payload, self._out(out, n), add)

    def state_dict(self):
        return {"rng": rng_to_array(self.rng)}

    def load_state_dict(self, state):
        if "rng" in state:
            rng_from_array(self.rng, state["rng"])


class TopK(Compressor):
    """Keep the ``ceil(ratio * n)`` largest-magnitude elements: int32 indices then float32 values (8 bytes each)."""

    name = "topk"

    def __init__(self, *, ratio: float = 0.01, **kw):
        super().__init__(**kw)
        self.ratio = _check_ratio(self.name, ratio)

    def config(self):
        return {"name": self.name, "ratio": self.ratio}

    def _fields(self, n):
        k = _k(self.ratio, n)
        return self._memo(n, lambda: Fields([("idx", np.int32, k), ("vals", np.float32, k)]))

    def payload_spec(self, layout):
        return [(self._fields(layout.size).nbytes, np.dtype(np.uint8))]

    def compress(self, x, layout):
        n = x.size
        payload, f = self._fields(n).new()
        idx = self.kernels.topk_indices(x, f["idx"].size)
        f["idx"][:] = idx
        f["vals"][:] = self.kernels.gather(x, idx)
        return payload, n

    def decompress(self, payload, n, out=None, add=False):
        f = self._fields(n).views(payload)
        return self.kernels.scatter(f["idx"], f["vals"], self._out(out, n), add)
