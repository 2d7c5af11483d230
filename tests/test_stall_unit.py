"""Stall inspection as a pure function of the progress table."""
from ring_allreduce.resilience.stall import find_stall


def test_no_stall_below_threshold():
    table = {0: (5, "comm", 99.0), 1: (5, "compute", 98.0)}
    assert find_stall(table, now=100.0, threshold=2.0) is None


def test_names_the_ranks_that_have_not_arrived():
    table = {0: (5, "comm", 90.0), 1: (5, "comm", 91.0), 2: (5, "compute", 89.0), 3: (4, "update", 95.0)}
    s = find_stall(table, now=100.0, threshold=5.0)
    assert s.step == 5 and s.waiting == [0, 1] and s.missing == [2, 3]
    assert s.waited_s == 10.0
    msg = s.message()
    assert "rank(s) [0, 1] have waited 10.0 s in comm at step 5" in msg
    assert "rank 2 (compute at step 5 for 11.0 s)" in msg and "rank 3 (update at step 4" in msg


def test_ranks_ahead_are_not_missing_and_everyone_inside_is_reported():
    table = {0: (3, "wait", 0.0), 1: (3, "comm", 1.0)}
    s = find_stall(table, now=20.0, threshold=5.0)
    assert s.missing == [] and "every rank is inside the collective" in s.message()
    table = {0: (3, "comm", 0.0), 1: (4, "compute", 0.0)}  # rank 1 already past step 3
    assert find_stall(table, now=20.0, threshold=5.0).missing == []
