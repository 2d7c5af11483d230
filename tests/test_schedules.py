"""Pure tests of the communication schedules: replay them on symbolic data (sets of contributing ranks)."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ring_allreduce import schedules

sizes = st.integers(min_value=1, max_value=33)
counts = st.integers(min_value=0, max_value=150)


@given(count=counts, parts=st.integers(min_value=1, max_value=40))
def test_chunk_bounds_balanced(count, parts):
    b = schedules.chunk_bounds(count, parts)
    assert b[0] == 0 and b[-1] == count and len(b) == parts + 1
    lengths = [b[i + 1] - b[i] for i in range(parts)]
    assert min(lengths) >= 0 and max(lengths) - min(lengths) <= 1


def _replay(size, count, steps_of, state, reduce):
    """Run one lock-step phase; each rank's steps pair up with its partners' (same range, same step index)."""
    all_steps = [steps_of(r) for r in range(size)]
    nsteps = {len(s) for s in all_steps}
    assert len(nsteps) == 1, "every rank must take the same number of steps"
    for k in range(nsteps.pop()):
        msgs = {}
        for r in range(size):
            step = all_steps[r][k]
            if step.dest is not None:
                msgs[(r, step.dest)] = [set(state[r][i]) for i in range(*step.send)]
        for r in range(size):
            step = all_steps[r][k]
            if step.source is None:
                continue
            data = msgs.pop((step.source, r))
            lo, hi = step.recv
            assert len(data) == hi - lo, "sender and receiver disagree on the range"
            for i, got in zip(range(lo, hi), data):
                if reduce:
                    assert not (got & state[r][i]), "a contribution would be counted twice"
                    state[r][i] = state[r][i] | got
                else:
                    state[r][i] = got
        assert not msgs, "a message was sent that nobody received"


@settings(max_examples=150, deadline=None)
@given(size=sizes, count=counts)
def test_ring_every_rank_gets_every_contribution_once(size, count):
    state = [[{r} for _ in range(count)] for r in range(size)]
    _replay(size, count, lambda r: schedules.ring_reduce_scatter(r, size, count), state, reduce=True)
    everyone = set(range(size))
    for r in range(size):
        lo, hi = schedules.ring_owned_chunk(r, size, count)
        assert all(state[r][i] == everyone for i in range(lo, hi))
    _replay(size, count, lambda r: schedules.ring_allgather(r, size, count), state, reduce=False)
    assert all(state[r][i] == everyone for r in range(size) for i in range(count))


@given(size=sizes)
def test_fold_and_real_rank_are_inverse(size):
    seen = []
    for r in range(size):
        f = schedules.fold(r, size)
        assert f.pof2 <= size < 2 * f.pof2
        if f.newrank is None:
            assert schedules.fold(f.partner, size).partner == r
        else:
            assert schedules.real_rank(f.newrank, f.rem) == r
            seen.append(f.newrank)
    assert sorted(seen) == list(range(schedules.fold(0, size).pof2))


@settings(max_examples=100, deadline=None)
@given(size=sizes)
def test_recursive_doubling_partners_symmetric_and_complete(size):
    partners = {r: schedules.recursive_doubling(r, size) for r in range(size)}
    have = {r: {r} for r in range(size)}
    for r in range(size):  # fold: even rank hands its data to its odd partner
        f = schedules.fold(r, size)
        if f.newrank is None:
            have[f.partner] |= have[r]
    active = [r for r in range(size) if partners[r] or schedules.fold(r, size).newrank is not None]
    steps = {len(partners[r]) for r in active}
    assert len(steps) == 1
    for k in range(steps.pop()):
        new = {}
        for r in active:
            q = partners[r][k]
            assert partners[q][k] == r, "exchange partners must be mutual"
            assert not (have[r] & have[q])
            new[r] = have[r] | have[q]
        have.update(new)
    assert all(have[r] == set(range(size)) for r in active)


@settings(max_examples=150, deadline=None)
@given(size=sizes, count=counts)
def test_recursive_halving_covers_each_block_once(size, count):
    """Each folded rank ends owning a distinct block with every rank's contribution; the allgather restores all."""
    state = {}
    for r in range(size):
        f = schedules.fold(r, size)
        if f.newrank is not None:
            own = {r} | ({f.partner} if f.partner is not None else set())
            state[r] = [set(own) for _ in range(count)]
    steps = {r: schedules.recursive_halving(r, size, count) for r in state}
    nsteps = {len(s) for s in steps.values()}
    assert len(nsteps) == 1
    n = nsteps.pop()
    for k in range(n):
        incoming = {}
        for r in state:
            st_ = steps[r][k]
            peer = steps[st_.partner][k]
            assert peer.partner == r and peer.keep == st_.send and peer.send == st_.keep
            assert peer.lower != st_.lower
            incoming[r] = [set(state[st_.partner][i]) for i in range(*peer.send)]
        for r in state:
            lo, hi = steps[r][k].keep
            for i, got in zip(range(lo, hi), incoming[r]):
                assert not (got & state[r][i])
                state[r][i] |= got
    everyone = set(range(size))
    owned = []
    for r in state:
        lo, hi = steps[r][-1].keep if n else (0, count)
        assert all(state[r][i] == everyone for i in range(lo, hi))
        owned.append((lo, hi))
    covered = sorted(i for lo, hi in owned for i in range(lo, hi))
    assert covered == list(range(count)), "the final blocks must partition the vector"


@given(size=sizes)
def test_binomial_tree_is_a_spanning_tree(size):
    nodes = {r: schedules.binomial_tree(r, size) for r in range(size)}
    assert nodes[0].parent is None
    for r, node in nodes.items():
        for c in node.children:
            assert nodes[c].parent == r and c > r
        if r:
            assert r in nodes[node.parent].children
    reach, frontier = {0}, [0]
    while frontier:
        nxt = [c for r in frontier for c in nodes[r].children]
        reach.update(nxt)
        frontier = nxt
    assert reach == set(range(size))


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6, 7, 8])
def test_ring_steps_p_minus_one(size):
    assert len(schedules.ring_reduce_scatter(0, size, 100)) == size - 1
    assert len(schedules.ring_allgather(0, size, 100)) == size - 1
