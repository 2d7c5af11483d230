"""The alpha-beta-gamma cost model: fit it to measured rows, predict each algorithm, find the crossover sizes.

A message of n bytes costs ``alpha + n*beta`` to send and ``n*gamma`` to reduce. Each algorithm's time on p ranks is
``a*alpha + b*beta + c*gamma`` with (a, b, c) from :func:`coefficients` (non-powers of two add the fold's extra
exchange). The three parameters are fitted by non-negative least squares on *relative* error, so 8-byte and
64-MiB rows weigh alike. Algorithms without a model (native ``mpi``, ``gloo``) get their own two-parameter fit
``t = alpha_A + n*beta_A``, used only to locate crossovers.
"""
from __future__ import annotations

import itertools
import math
from typing import Dict, List, Optional, Tuple

import numpy as np


def _log2_floor(p: int) -> int:
    return p.bit_length() - 1


def coefficients(algorithm: str, p: int, n: float, dtype="float32") -> Optional[Tuple[float, float, float]]:
    """(messages, bytes sent, bytes reduced) on the critical path; None for algorithms without a model."""
    if algorithm == "auto":
        from ..algorithms import auto

        algorithm = auto.select(int(n), p, dtype)
    if algorithm.endswith("+check"):
        algorithm = algorithm[: -len("+check")]
    if p <= 1:
        return (0.0, 0.0, 0.0)
    lg, pof2 = _log2_floor(p), 1 << _log2_floor(p)
    fold = 1.0 if p != pof2 else 0.0
    if algorithm == "ring":
        return (2.0 * (p - 1), 2.0 * (p - 1) / p * n, (p - 1) / p * n)
    if algorithm == "recursive_doubling":
        return (lg + 2 * fold, n * (lg + 2 * fold), n * (lg + fold))
    if algorithm == "rabenseifner":
        return (2.0 * lg + 2 * fold, 2.0 * (pof2 - 1) / pof2 * n + 2 * n * fold, (pof2 - 1) / pof2 * n + n * fold)
    if algorithm == "tree":
        depth = math.ceil(math.log2(p))
        return (2.0 * depth, 2.0 * depth * n, depth * n)
    return None


def _nnls(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with x >= 0 for a handful of columns (tries every support set: exact and dependency-free)."""
    k = a.shape[1]
    best, best_res = np.zeros(k), float(np.sum(y * y))
    for m in range(1, k + 1):
        for cols in itertools.combinations(range(k), m):
            sub = a[:, cols]
            x, *_ = np.linalg.lstsq(sub, y, rcond=None)
            if np.any(x < 0):
                continue
            res = float(np.sum((sub @ x - y) ** 2))
            if res < best_res:
                best_res, best = res, np.zeros(k)
                best[list(cols)] = x
    return best


class Fit:
    """Fitted parameters: ``alpha`` (s per message), ``beta`` and ``gamma`` (s per byte), and empirical
    ``(alpha_A, beta_A)`` per unmodelled algorithm."""

    def __init__(self, alpha: float, beta: float, gamma: float, p: int, empirical: Dict[str, tuple], n_rows: int):
        self.alpha, self.beta, self.gamma, self.p = alpha, beta, gamma, p
        self.empirical, self.n_rows = empirical, n_rows

    def predict(self, algorithm: str, nbytes: float, dtype="float32") -> Optional[float]:
        """Predicted seconds for one call, or None when the algorithm has neither a model nor an empirical fit."""
        c = coefficients(algorithm, self.p, nbytes, dtype)
        if c is not None:
            return c[0] * self.alpha + c[1] * self.beta + c[2] * self.gamma
        if algorithm in self.empirical:
            a, b = self.empirical[algorithm]
            return a + nbytes * b
        return None

    def as_dict(self) -> dict:
        return {
            "p": self.p, "rows_fitted": self.n_rows,
            "alpha_us": self.alpha * 1e6,
            "beta_ns_per_byte": self.beta * 1e9, "link_GBps": (1 / self.beta / 1e9) if self.beta > 0 else None,
            "gamma_ns_per_byte": self.gamma * 1e9, "reduce_GBps": (1 / self.gamma / 1e9) if self.gamma > 0 else None,
            "empirical": {k: {"alpha_us": a * 1e6, "beta_ns_per_byte": b * 1e9} for k, (a, b) in self.empirical.items()},
        }


def fit(rows: List[dict], p: int) -> Fit:
    """Fit alpha, beta, gamma to the rows of modelled algorithms (and alpha_A, beta_A to the others)."""
    modelled, others = [], {}
    for r in rows:
        if r["algorithm"] == "check" or r["time_us"] <= 0:
            continue
        c = coefficients(r["algorithm"], p, r["size_bytes"], r.get("dtype", "float32"))
        if c is None:
            others.setdefault(r["algorithm"], []).append(r)
        else:
            modelled.append((c, r["time_us"] * 1e-6))
    alpha = beta = gamma = 0.0
    if modelled:
        a = np.array([c for c, _ in modelled], dtype=float)
        t = np.array([t for _, t in modelled], dtype=float)
        scale = np.array([1.0, 1e-9, 1e-9])  # condition the columns (bytes are large numbers)
        x = _nnls(a * scale / t[:, None], np.ones_like(t))
        alpha, beta, gamma = (x * scale).tolist()
    empirical = {}
    for name, rs in others.items():
        n = np.array([r["size_bytes"] for r in rs], dtype=float)
        t = np.array([r["time_us"] * 1e-6 for r in rs])
        a = np.stack([np.ones_like(n), n * 1e-9], axis=1) / t[:, None]
        x = _nnls(a, np.ones_like(t))
        empirical[name] = (float(x[0]), float(x[1] * 1e-9))
    return Fit(alpha, beta, gamma, p, empirical, len(modelled))


def compare(rows: List[dict], f: Fit) -> List[dict]:
    """Predicted vs measured time per (algorithm, size)."""
    out = []
    for r in rows:
        pred = f.predict(r["algorithm"], r["size_bytes"], r.get("dtype", "float32"))
        if pred is None or r["algorithm"] == "check":
            continue
        out.append({"algorithm": r["algorithm"], "size_bytes": r["size_bytes"], "measured_us": r["time_us"],
                    "predicted_us": pred * 1e6, "ratio": (r["time_us"] / (pred * 1e6)) if pred > 0 else None})
    return out


def _sign_changes(sizes: List[float], diff: List[float]) -> List[float]:
    """Sizes where ``diff`` changes sign, interpolated linearly in log2(size)."""
    found = []
    for (s0, d0), (s1, d1) in zip(zip(sizes, diff), zip(sizes[1:], diff[1:])):
        if d0 == 0 or (d0 < 0) == (d1 < 0):
            continue
        w = d0 / (d0 - d1)
        found.append(2 ** (math.log2(s0) + w * (math.log2(s1) - math.log2(s0))))
    return found


def crossovers(rows: List[dict], f: Optional[Fit] = None) -> List[dict]:
    """Sizes where two algorithms swap places, from the measurements and (with ``f``) from the model."""
    by_alg: dict = {}
    for r in rows:  # auto is a mix of the others and +check a variant: they have no crossovers of their own
        if r["algorithm"] not in ("check", "auto") and "+" not in r["algorithm"]:
            by_alg.setdefault(r["algorithm"], {})[r["size_bytes"]] = r["time_us"]
    out = []
    for a, b in itertools.combinations(sorted(by_alg), 2):
        common = sorted(set(by_alg[a]) & set(by_alg[b]))
        if len(common) >= 2:
            diff = [by_alg[a][s] - by_alg[b][s] for s in common]
            for s in _sign_changes(common, diff):
                out.append({"a": a, "b": b, "source": "measured", "size_bytes": int(round(s)),
                            "faster_below": a if diff[0] < 0 else b})
        if f is not None and common:
            grid = list(np.geomspace(max(1, min(common)), max(common), 200))
            pa = [f.predict(a, s) for s in grid]
            pb = [f.predict(b, s) for s in grid]
            if None in pa or None in pb:
                continue
            diff = [x - y for x, y in zip(pa, pb)]
            for s in _sign_changes(grid, diff):
                out.append({"a": a, "b": b, "source": "model", "size_bytes": int(round(s)),
                            "faster_below": a if diff[0] < 0 else b})
    return out


def format_report(f: Fit, comparison: List[dict], cross: List[dict]) -> str:
    d = f.as_dict()
    lines = [f"# alpha-beta-gamma fit (p={f.p}, {f.n_rows} rows, relative least squares):",
             f"#   alpha = {d['alpha_us']:.3f} us per message",
             f"#   beta  = {d['beta_ns_per_byte']:.5f} ns/B" + (f" ({d['link_GBps']:.2f} GB/s)" if d["link_GBps"] else ""),
             f"#   gamma = {d['gamma_ns_per_byte']:.5f} ns/B" + (f" ({d['reduce_GBps']:.2f} GB/s)" if d["reduce_GBps"] else "")]
    for name, e in d["empirical"].items():
        lines.append(f"#   {name}: own fit alpha = {e['alpha_us']:.3f} us, beta = {e['beta_ns_per_byte']:.5f} ns/B")
    lines.append("#")
    lines.append("# " + "size(B)".rjust(12) + "  " + "algorithm".ljust(22) + "measured(us)".rjust(13)
                 + "predicted(us)".rjust(14) + "ratio".rjust(8))
    for c in comparison:
        ratio = "" if c["ratio"] is None else f"{c['ratio']:.2f}"
        lines.append("  " + str(c["size_bytes"]).rjust(12) + "  " + c["algorithm"].ljust(22)
                     + f"{c['measured_us']:13.2f}{c['predicted_us']:14.2f}{ratio:>8}")
    lines.append("# crossovers (faster below the size -> the other above it):")
    for c in cross:
        lines.append(f"#   {c['source']:8s} {c['a']} vs {c['b']}: {c['size_bytes']} B "
                     f"({c['faster_below']} faster below)")
    if not cross:
        lines.append("#   none in the measured range")
    return "\n".join(lines) + "\n"
