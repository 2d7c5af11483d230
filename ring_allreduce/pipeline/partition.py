"""The pure part of the pipeline: which layers each stage holds, where they lie in the flat vector, the schedule.

Nothing here talks to MPI, so the layout and the schedule are testable on one process.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple


def layer_costs(sizes: Sequence[int]) -> List[int]:
    """Parameters of each dense layer ``i`` (``sizes[i] * sizes[i+1] + sizes[i+1]``): the cost that is balanced."""
    return [sizes[i] * sizes[i + 1] + sizes[i + 1] for i in range(len(sizes) - 1)]


def partition(costs: Sequence[int], stages: int) -> List[Tuple[int, int]]:
    """Split layers into ``stages`` contiguous non-empty ranges ``[a, b)`` minimising the largest stage's cost.

    Exact dynamic programme over (layers, stages), tiny for an MLP; among equal optima the earliest cut wins, so
    every rank computes the same layout.
    """
    n = len(costs)
    if not 1 <= stages <= n:
        raise ValueError(f"need 1 <= stages <= layers ({n}), got {stages}")
    pre = [0]
    for c in costs:
        pre.append(pre[-1] + int(c))
    inf = float("inf")
    # best[s][i]: the smallest max-cost splitting the first i layers into s stages; cut[s][i]: where the last began
    best = [[inf] * (n + 1) for _ in range(stages + 1)]
    cut = [[0] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = 0
    for s in range(1, stages + 1):
        for i in range(s, n + 1):
            for j in range(s - 1, i):
                v = max(best[s - 1][j], pre[i] - pre[j])
                if v < best[s][i]:
                    best[s][i], cut[s][i] = v, j
    out, i = [], n
    for s in range(stages, 0, -1):
        j = cut[s][i]
        out.append((j, i))
        i = j
    return out[::-1]


def flat_span(model, layers: Tuple[int, int]) -> slice:
    """The contiguous slice of the flat parameter vector holding layers ``[a, b)`` (the vector is last layer first)."""
    a, b = layers
    w = next(s for s in model.specs if s.name == f"W{b - 1}")
    return slice(w.offset, model.layer_end(a))


def bubble_formula(stages: int, micro: int) -> float:
    """GPipe's idle fraction with equal stage times and free communication: ``(S - 1) / (M + S - 1)``."""
    return (stages - 1) / (micro + stages - 1)


def gpipe(micro: int) -> List[Tuple[str, int]]:
    """The GPipe order of one stage's work: every micro-batch forward, then every one backward in reverse."""
    return [("F", m) for m in range(micro)] + [("B", m) for m in reversed(range(micro))]


def one_f_one_b(stage: int, stages: int, micro: int) -> List[Tuple[str, int]]:
    """1F1B (PipeDream-flush): ``S - 1 - stage`` warm-up forwards, then alternate one forward, one backward.

    At most ``S - stage`` micro-batches' activations are alive on a stage (GPipe keeps all ``M``); the bubble is
    the same as GPipe's.
    """
    warm = min(stages - 1 - stage, micro)
    order = [("F", m) for m in range(warm)]
    f, b = warm, 0
    while b < micro:
        if f < micro:
            order.append(("F", f))
            f += 1
        order.append(("B", b))
        b += 1
    return order


SCHEDULES = ("gpipe", "1f1b")


def schedule(name: str, stage: int, stages: int, micro: int) -> List[Tuple[str, int]]:
    """The named schedule's order of ``("F"|"B", micro-batch)`` for ``stage``."""
    if name == "gpipe":
        return gpipe(micro)
    if name == "1f1b":
        return one_f_one_b(stage, stages, micro)
    raise ValueError(f"unknown pipeline schedule {name!r}; valid: {', '.join(SCHEDULES)}")
