"""Communication schedules: who sends which elements to whom at each step.

Every function here is pure (a function of rank, size and count only) so the schedules are tested without MPI
(``tests/test_schedules.py`` replays them on symbolic data and checks that each rank ends with every contribution
exactly once, reduced in one fixed order).
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

Range = Tuple[int, int]  # [start, stop) in elements


class Step(NamedTuple):
    """One exchange: send ``send`` to ``dest`` while receiving ``recv`` from ``source`` (None: no send/receive)."""

    dest: Optional[int]
    send: Range
    source: Optional[int]
    recv: Range


def chunk_bounds(count: int, parts: int) -> List[int]:
    """Split ``count`` elements into ``parts`` contiguous chunks whose sizes differ by at most one."""
    q, r = divmod(count, parts)
    bounds = [0]
    for i in range(parts):
        bounds.append(bounds[-1] + q + (1 if i < r else 0))
    return bounds


def _chunk(bounds: List[int], i: int) -> Range:
    return bounds[i], bounds[i + 1]


def ring_reduce_scatter(rank: int, size: int, count: int) -> List[Step]:
    """Ring reduce-scatter: at step k send chunk (rank-k) right, receive chunk (rank-k-1) from the left and reduce it.

    After ``size-1`` steps the rank owns chunk ``(rank+1) % size`` fully reduced.
    """
    b = chunk_bounds(count, size)
    right, left = (rank + 1) % size, (rank - 1) % size
    return [Step(right, _chunk(b, (rank - k) % size), left, _chunk(b, (rank - k - 1) % size)) for k in range(size - 1)]


def ring_allgather(rank: int, size: int, count: int) -> List[Step]:
    """Ring allgather after :func:`ring_reduce_scatter`: pass each reduced chunk once around the ring."""
    b = chunk_bounds(count, size)
    right, left = (rank + 1) % size, (rank - 1) % size
    return [Step(right, _chunk(b, (rank + 1 - k) % size), left, _chunk(b, (rank - k) % size)) for k in range(size - 1)]


def ring_owned_chunk(rank: int, size: int, count: int) -> Range:
    """The chunk a rank holds fully reduced after the ring reduce-scatter."""
    return _chunk(chunk_bounds(count, size), (rank + 1) % size)


class Fold(NamedTuple):
    """How a non-power-of-two communicator folds onto ``pof2`` ranks.

    The first ``2*rem`` ranks pair up: each even rank hands its data to the odd rank above it and sits out
    (``newrank`` None) until it receives the result back. ``partner`` is that pair's other rank (None otherwise).
    """

    pof2: int
    rem: int
    newrank: Optional[int]
    partner: Optional[int]


def fold(rank: int, size: int) -> Fold:
    pof2 = 1 << (size.bit_length() - 1)
    rem = size - pof2
    if rank < 2 * rem:
        if rank % 2 == 0:
            return Fold(pof2, rem, None, rank + 1)
        return Fold(pof2, rem, rank // 2, rank - 1)
    return Fold(pof2, rem, rank - rem, None)


def real_rank(newrank: int, rem: int) -> int:
    """Invert :func:`fold`'s renumbering."""
    return 2 * newrank + 1 if newrank < rem else newrank + rem


def recursive_doubling(rank: int, size: int) -> List[int]:
    """Partners (real ranks) of a folded rank in recursive doubling, nearest first; empty for a rank that sits out."""
    f = fold(rank, size)
    if f.newrank is None:
        return []
    partners, mask = [], 1
    while mask < f.pof2:
        partners.append(real_rank(f.newrank ^ mask, f.rem))
        mask <<= 1
    return partners


class HalvingStep(NamedTuple):
    """One step of recursive halving: keep ``keep`` (reduce the partner's copy into it), send ``send``."""

    partner: int
    keep: Range
    send: Range
    lower: bool  # True when this rank has the lower new rank of the pair (its data goes first in the reduction)


def recursive_halving(rank: int, size: int, count: int) -> List[HalvingStep]:
    """Rabenseifner's reduce-scatter by recursive halving over the folded ranks (distance pof2/2 first).

    The count is split into ``pof2`` balanced blocks; after the steps a rank owns block ``bitrev``-free index
    ``newrank``'s range, i.e. the ``keep`` range of its last step. The allgather replays the steps in reverse,
    sending ``keep`` and receiving ``send``.
    """
    f = fold(rank, size)
    if f.newrank is None:
        return []
    b = chunk_bounds(count, f.pof2)
    lo, hi = 0, f.pof2  # in blocks
    steps, mask = [], f.pof2 >> 1
    while mask:
        mid = (lo + hi) // 2
        lower = not (f.newrank & mask)
        keep, send = ((lo, mid), (mid, hi)) if lower else ((mid, hi), (lo, mid))
        steps.append(HalvingStep(real_rank(f.newrank ^ mask, f.rem), (b[keep[0]], b[keep[1]]), (b[send[0]], b[send[1]]), lower))
        lo, hi = keep
        mask >>= 1
    return steps


class TreeNode(NamedTuple):
    """A rank's place in the binomial tree rooted at 0: its parent (None at the root) and children, nearest first."""

    parent: Optional[int]
    children: List[int]


def binomial_tree(rank: int, size: int) -> TreeNode:
    children, mask = [], 1
    while mask < size:
        if rank & mask:
            return TreeNode(rank - mask, children)
        if rank + mask < size:
            children.append(rank + mask)
        mask <<= 1
    return TreeNode(None, children)
