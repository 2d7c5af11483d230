"""Backup workers without MPI: straggler specs and draws, decision encoding."""
import pytest

from ring_allreduce.resilience import coordinator as co
from ring_allreduce.resilience.straggle import StraggleSpec, Straggler, parse


@pytest.mark.parametrize("spec, expected", [
    ("1:5", StraggleSpec(1, 5.0, 1.0)),
    ("0:2.5:0.25", StraggleSpec(0, 2.5, 0.25)),
    ("random:3:0.1", StraggleSpec(None, 3.0, 0.1)),
    (" RANDOM:4:1 ", StraggleSpec(None, 4.0, 1.0)),
])
def test_parse_valid(spec, expected):
    assert parse(spec) == expected


@pytest.mark.parametrize("spec, msg", [
    ("1", "expected"), ("1:0.5", "FACTOR must be >= 1"), ("1:x", "numbers"), ("1:2:1.5", r"\[0, 1\]"),
    ("random:2", "needs a probability"), ("a:2", "integer or 'random'"), ("-1:2", ">= 0"), ("1:2:3:4", "expected"),
])
def test_parse_errors_name_the_problem(spec, msg):
    with pytest.raises(ValueError, match=msg):
        parse(spec)


def test_rank_outside_job_is_an_error():
    with pytest.raises(ValueError, match="does not exist"):
        Straggler(["4:2"], 0, 4)


def test_always_slowed_rank_sleeps_factor_minus_one_times_compute():
    slept = []
    s = Straggler(["1:5"], 1, 3, sleep=slept.append)
    assert s.after_compute(0, 0.01) == pytest.approx(0.04)
    other = Straggler(["1:5"], 0, 3, sleep=slept.append)
    assert other.after_compute(0, 0.01) == 0.0
    assert slept == [pytest.approx(0.04)]


def test_compute_floor_pads_everyone_and_scales_the_straggler():
    fast = Straggler([], 0, 2, floor_s=0.02, sleep=lambda s: None)
    slow = Straggler(["1:5"], 1, 2, floor_s=0.02, sleep=lambda s: None)
    assert fast.delay(0, 0.005) == pytest.approx(0.015)
    assert slow.delay(0, 0.005) == pytest.approx(0.095)  # 5 * max(0.005, 0.02) - 0.005


def test_probability_is_seeded_per_rank_and_about_right():
    sa, sb, sc = (Straggler(["0:2:0.3"], 0, 2, seed=s) for s in (7, 7, 8))
    a = [sa.factor(t) for t in range(2000)]
    assert a == [sb.factor(t) for t in range(2000)]  # reproducible
    assert a != [sc.factor(t) for t in range(2000)]  # and the seed matters
    frac = sum(f > 1 for f in a) / len(a)
    assert 0.25 < frac < 0.35


def test_random_mode_ranks_agree_on_the_victim():
    p, steps = 4, 400
    gens = [Straggler(["random:3:0.5"], r, p, seed=11) for r in range(p)]
    slowed = [[g.factor(t) > 1 for g in gens] for t in range(steps)]
    assert all(sum(row) <= 1 for row in slowed)  # at most one rank per step, the same draw everywhere
    hit = sum(any(row) for row in slowed) / steps
    assert 0.4 < hit < 0.6
    assert all(any(row[r] for row in slowed) for r in range(p))  # every rank is hit sometimes


def test_decision_roundtrip():
    p = 5
    d = co.Decision(co.NORMAL, 17, 1, (1, 2, 4), (17, 15, 17), (0, 2))
    back = co.decode(co.encode(d, p), p)
    assert back == d
    assert back.stale == (2,)
    assert back.to_dict()["contributors"] == [1, 2, 4]
