"""Turn measured rows into the selection table that ``algorithm="auto"`` reads (see :mod:`..algorithms.auto`).

For each rank count the fastest algorithm is taken at every measured size; a one-size blip whose advantage is
under ``margin`` is smoothed into its neighbours (noise, not a real crossover); runs of the same winner become
rules ``{"p_min", "p_max", "max_bytes", "algorithm"}`` where ``max_bytes`` is the last size the winner won.
Tables for several p merge: each measured p covers the rank counts above the previous measured one, the
largest also covers every p beyond it.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

from .report import _atomic_write

#: names in bench rows that ``auto`` must never pick (not algorithms, or not part of the package)
_NOT_CANDIDATES = {"auto", "check", "gloo"}
#: node-aware algorithms: the shared-memory router picks them before the table is read (shm.dispatch.route)
NODE_AWARE = ("shm", "hierarchical")


def candidates(rows: List[dict]) -> List[str]:
    from .. import algorithms

    names = dict.fromkeys(r["algorithm"] for r in rows)
    return [n for n in names if n not in _NOT_CANDIDATES and n not in NODE_AWARE and "+" not in n
            and n in algorithms.registry]


def winners(rows: List[dict], margin: float = 0.08) -> List[tuple]:
    """``[(size_bytes, algorithm), ...]``: the fastest per size, with hysteresis against noise.

    Walking up the sizes, the algorithm chosen for the previous size is kept while it is within ``margin`` of the
    fastest (a switch must be worth it), and a one-size excursion between two sizes won by the same algorithm is
    smoothed away when that algorithm was within ``margin`` there.
    """
    allowed = set(candidates(rows))
    times: Dict[int, Dict[str, float]] = {}
    for r in rows:
        if r["algorithm"] in allowed and r["size_bytes"] > 0:
            times.setdefault(r["size_bytes"], {})[r["algorithm"]] = r["time_us"]
    sizes = sorted(times)
    best = [min(times[s], key=times[s].get) for s in sizes]
    win: List[str] = []
    for k, s in enumerate(sizes):
        cur = win[-1] if win else None
        if cur is not None and cur in times[s] and times[s][cur] <= (1 + margin) * times[s][best[k]]:
            win.append(cur)
        else:
            win.append(best[k])
    for k in range(1, len(sizes) - 1):
        before, after = win[k - 1], win[k + 1]
        if win[k] != before and before == after and before in times[sizes[k]]:
            if times[sizes[k]][before] <= (1 + margin) * times[sizes[k]][win[k]]:
                win[k] = before
    return list(zip(sizes, win))


def rules_for(rows: List[dict], margin: float = 0.05) -> List[dict]:
    """Rules (``max_bytes``, ``algorithm``) for one rank count, smallest sizes first; the last has no limit."""
    w = winners(rows, margin)
    if not w:
        raise ValueError("no rows of package algorithms to tune from")
    rules: List[dict] = []
    for size, alg in w:
        if rules and rules[-1]["algorithm"] == alg:
            rules[-1]["max_bytes"] = size
        else:
            rules.append({"max_bytes": size, "algorithm": alg})
    rules[-1]["max_bytes"] = None
    return rules


def build_table(per_p: Dict[int, List[dict]], measured: Optional[dict] = None) -> dict:
    """Flatten per-p rules into the ordered rule list ``auto.select`` walks (first match wins)."""
    ps = sorted(int(p) for p in per_p)
    flat = []
    for i, p in enumerate(ps):
        p_min = 1 if i == 0 else ps[i - 1] + 1
        p_max = None if i == len(ps) - 1 else p
        for rule in per_p[p] if p in per_p else per_p[str(p)]:
            flat.append({"p_min": p_min, "p_max": p_max, "dtypes": None, "max_bytes": rule["max_bytes"],
                         "algorithm": rule["algorithm"]})
    return {
        "comment": "Selection table for algorithm='auto', written by `ring-allreduce bench --tune`. The first rule "
                   "whose p range, dtypes and max_bytes match wins. Override with $RING_ALLREDUCE_AUTO_TABLE.",
        "measured": measured or {},
        "per_p": {str(p): per_p[p] if p in per_p else per_p[str(p)] for p in ps},
        "rules": flat,
    }


def write_table(path: str, p: int, rules: List[dict], note: dict, merge: bool = True) -> dict:
    """Write (or merge into) the table at ``path`` with ``rules`` for ``p`` ranks; return the table."""
    per_p: Dict[int, List[dict]] = {}
    measured: dict = {}
    if merge and os.path.exists(path):
        try:
            with open(path) as fh:
                old = json.load(fh)
            per_p = {int(k): v for k, v in (old.get("per_p") or {}).items()}
            measured = dict(old.get("measured") or {})
        except (OSError, ValueError, AttributeError):
            per_p, measured = {}, {}
    per_p[int(p)] = rules
    measured[str(p)] = note
    table = build_table(per_p, measured)
    from ..algorithms import auto

    auto._validate(table)
    _atomic_write(path, json.dumps(table, indent=1) + "\n")
    return table


def format_rules(p: int, rules: List[dict]) -> str:
    lines = [f"# auto table for p={p}:"]
    lo = 0
    for r in rules:
        hi = "inf" if r["max_bytes"] is None else str(r["max_bytes"])
        lines.append(f"#   {lo:>10} .. {hi:>10} B -> {r['algorithm']}")
        lo = (r["max_bytes"] or 0) + 1
    return "\n".join(lines) + "\n"
