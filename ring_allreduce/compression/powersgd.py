"""``powersgd``: rank-r approximation of each weight matrix by one power-iteration step (Vogels et al., 2019).

Round 1 sums ``P = M Q`` over ranks (together with the tensors sent uncompressed), every rank orthogonalizes the
identical sum, round 2 sums ``Q = M^T P``; the result is ``P Q^T``. Both rounds are plain sums, so both go through
the hand-written allreduce. ``Q`` starts from a generator seeded identically on every rank and, with
``warm_start``, the previous step's reduced ``Q`` is reused (one power iteration per step converges over steps).
As in PyTorch's hook, a matrix is compressed only when ``(n + m) * r * min_compression_rate < n * m``; 1-D
tensors (biases) and matrices too small to gain are sent uncompressed in round 1.
"""
from __future__ import annotations

import math

import numpy as np

from .base import Compressor, rng_from_array, rng_to_array

ORTHOGONALIZATIONS = ("qr", "gram_schmidt")


def gram_schmidt(p: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Orthonormalize the columns of ``p`` in place (modified Gram-Schmidt; eps keeps zero columns finite)."""
    for j in range(p.shape[1]):
        col = p[:, j]
        for i in range(j):
            col -= np.dot(p[:, i], col) * p[:, i]
        col /= np.linalg.norm(col) + eps
    return p


def orthogonalize(p: np.ndarray, method: str) -> np.ndarray:
    if method == "qr":
        return np.ascontiguousarray(np.linalg.qr(p)[0], dtype=np.float32)
    return gram_schmidt(p)


class PowerSGD(Compressor):
    """Low-rank compression with two allreduces per bucket (P, then Q)."""

    name = "powersgd"
    summable = True
    rounds = 2

    def __init__(self, *, rank: int = 2, min_compression_rate: float = 2.0, warm_start: bool = True,
                 orthogonalization: str = "qr", **kw):
        super().__init__(**kw)
        if not (isinstance(rank, (int, np.integer)) and rank >= 1):
            raise ValueError(f"powersgd rank must be an integer >= 1, got {rank!r}")
        if not min_compression_rate >= 1:
            raise ValueError(f"min_compression_rate must be >= 1 (no gain below 1), got {min_compression_rate!r}")
        if orthogonalization not in ORTHOGONALIZATIONS:
            raise ValueError(f"orthogonalization must be one of {ORTHOGONALIZATIONS}, got {orthogonalization!r}")
        self.rank, self.min_compression_rate = int(rank), float(min_compression_rate)
        self.warm_start, self.orthogonalization = bool(warm_start), orthogonalization
        self.rng = np.random.default_rng(list(self.seed))  # identical on every rank: Q must agree
        self.qs = None  # per compressed matrix: the (m, r) Q of the last step (warm start)

    def config(self):
        return {"name": self.name, "rank": self.rank, "min_compression_rate": self.min_compression_rate,
                "warm_start": self.warm_start, "orthogonalization": self.orthogonalization, "seed": list(self.seed)}

    def plan(self, layout):
        """Return ``(compressed, uncompressed)``: lists of ``(offset, n, m, r)`` and ``(offset, size)``."""
        return self._memo(layout.shapes, lambda: self._plan(layout))

    def _plan(self, layout):
        comp, unc = [], []
        for shape, a in zip(layout.shapes, layout.offsets):
            size = math.prod(shape)
            if len(shape) >= 2:
                n, m = shape[0], size // shape[0]
                r = min(self.rank, n, m)
                if (n + m) * r * self.min_compression_rate < n * m:
                    comp.append((a, n, m, r))
                    continue
            unc.append((a, size))
        return comp, unc

    def payload_spec(self, layout):
        comp, unc = self.plan(layout)
        f32 = np.dtype(np.float32)
        return [(sum(s for _, s in unc) + sum(n * r for _, n, _, r in comp), f32),
                (sum(m * r for _, _, m, r in comp), f32)]

    def _initial_qs(self, comp):
        return [self.rng.standard_normal((m, r)).astype(np.float32) for _, _, m, r in comp]

    def compress(self, x, layout):
        comp, unc = self.plan(layout)
        shapes = [(m, r) for _, _, m, r in comp]
        if not self.warm_start or self.qs is None or [q.shape for q in self.qs] != shapes:
            self.qs = self._initial_qs(comp)
        u = sum(s for _, s in unc)
        payload = np.empty(u + sum(n * r for _, n, _, r in comp), np.float32)
        pos = 0
        for a, s in unc:
            payload[pos:pos + s] = x[a:a + s]
            pos += s
        ms = []
        for (a, n, m, r), q in zip(comp, self.qs):
            mat = x[a:a + n * m].reshape(n, m)
            ms.append(mat)
            np.matmul(mat, q, out=payload[pos:pos + n * r].reshape(n, r))
            pos += n * r
        return payload, {"x": x, "layout": layout, "comp": comp, "unc": unc, "ms": ms, "u": u}

    def advance(self, reduced, ctx):
        comp, pos = ctx["comp"], ctx["u"]
        ctx["unc_sum"] = reduced[:pos].copy()
        ps = []
        payload = np.empty(sum(m * r for _, _, m, r in comp), np.float32)
        qpos = 0
        for (a, n, m, r), mat in zip(comp, ctx["ms"]):
            p = orthogonalize(reduced[pos:pos + n * r].reshape(n, r).copy(), self.orthogonalization)
            pos += n * r
            ps.append(p)
            np.matmul(mat.T, p, out=payload[qpos:qpos + m * r].reshape(m, r))
            qpos += m * r
        ctx["ps"] = ps
        return payload, ctx

    def _expand(self, payload, ctx, unc_values, out, add):
        out = self._out(out, ctx["layout"].size)
        pos = 0
        for a, s in ctx["unc"]:
            if add:
                out[a:a + s] += unc_values[pos:pos + s]
            else:
                out[a:a + s] = unc_values[pos:pos + s]
            pos += s
        qpos = 0
        for (a, n, m, r), p in zip(ctx["comp"], ctx["ps"]):
            approx = p @ payload[qpos:qpos + m * r].reshape(m, r).T
            qpos += m * r
            if add:
                out[a:a + n * m] += approx.reshape(-1)
            else:
                out[a:a + n * m] = approx.reshape(-1)
        return out

    def decompress(self, payload, ctx, out=None, add=False):
        """``payload`` is round 2's (reduced) Q; the uncompressed tensors come from round 1's reduced sum."""
        return self._expand(payload, ctx, ctx["unc_sum"], out, add)

    def local_estimate(self, payload, ctx):
        x = ctx["x"]
        local_unc = np.concatenate([x[a:a + s] for a, s in ctx["unc"]]) if ctx["unc"] else x[:0]
        return self._expand(payload, ctx, local_unc, None, False)

    def after_reduce(self, reduced, ctx):
        if self.warm_start:
            qpos = 0
            for i, (_, _, m, r) in enumerate(ctx["comp"]):
                self.qs[i] = reduced[qpos:qpos + m * r].reshape(m, r).copy()
                qpos += m * r

    def state_dict(self):
        state = {"rng": rng_to_array(self.rng)}
        for i, q in enumerate(self.qs or []):
            state[f"q{i}"] = q
        return state

    def load_state_dict(self, state):
        if "rng" in state:
            rng_from_array(self.rng, state["rng"])
        qs = [np.asarray(state[f"q{i}"], np.float32) for i in range(len(state)) if f"q{i}" in state]
        self.qs = qs or None
