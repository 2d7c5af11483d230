"""Backup workers under MPI: every update is the average over the recorded contributors, ranks stay identical.

The problem is a quadratic per rank, ``grad_r(w) = w - c_r``, so the reference trajectory can be recomputed from
the recorded decisions alone: ``w[t+1] = w[t] - lr * mean_{r in S_t}(w[s_r] - c_r)`` (``s_r = t`` unless the
gradient was stale). The straggler (the last rank) sleeps 5x a 2 ms compute floor, so it is usually left out.
"""
import numpy as np
import pytest
from mpi4py import MPI

from ring_allreduce.resilience.backup import BackupWorkers, default_reduce
from ring_allreduce.resilience.straggle import Straggler
from tests.mpi_util import all_ok, assert_identical, rank_input

pytestmark = pytest.mark.mpi

N_PARAM, LR = 33, 0.5


def targets(p, seed=3):
    base = rank_input(seed, 99, N_PARAM, np.float64)
    return [base + 0.01 * rank_input(seed, r, N_PARAM, np.float64) for r in range(p)]


def run(comm, b, steps, *, staleness=0, sync_every=0, straggle=True, reduce=None):
    """Train the quadratic; return (bw, final w, {version: w after it})."""
    r, p = comm.Get_rank(), comm.Get_size()
    c = targets(p)[r]
    w = np.zeros(N_PARAM)
    specs = [f"{p - 1}:5"] if straggle and p > 1 else []
    slow = Straggler(specs, r, p, seed=1, floor_s=0.002)
    bw = BackupWorkers(comm, b, staleness=staleness, reduce=reduce or default_reduce("ring"), timeout=60)
    hist = {0: w.copy()}
    last_sync = 0

    def apply(avg):
        w[...] -= LR * avg

    while bw.version < steps:
        if sync_every and bw.version % sync_every == 0 and bw.version > last_sync:
            bw.sync([w])
            last_sync = bw.version
        g = w - c
        slow.after_compute(bw.version, 0.0)
        bw.step(g, apply, [w])
        hist[bw.version] = w.copy()
    bw.close([w])
    return bw, w, hist


def reference(decisions, p, steps):
    c = targets(p)
    ref = {0: np.zeros(N_PARAM)}
    for d in decisions:
        grads = [ref[s] - c[q] for q, s in zip(d.contributors, d.contributor_steps)]
        ref[d.step + 1] = ref[d.step] - LR * np.mean(grads, axis=0)
    return ref


def check_against_reference(comm, bw, w, hist, steps, b):
    p = comm.Get_size()
    steps_seen = [d.step for d in bw.decisions]
    all_ok(comm, steps_seen == list(range(steps)), f"decided steps {steps_seen}")
    fresh = [sum(s == d.step for s in d.contributor_steps) for d in bw.decisions]
    all_ok(comm, all(f == p - b for f in fresh), f"fresh contributors per step {fresh} (expected {p - b})")
    enc = np.array([[d.step, sum(1 << q for q in d.contributors)] for d in bw.decisions], dtype=np.int64)
    assert_identical(comm, enc, "recorded contributor sets")
    ref = reference(bw.decisions, p, steps)
    bad = [v for v, x in hist.items() if not np.allclose(x, ref[v], rtol=1e-12, atol=1e-12)]
    all_ok(comm, not bad, f"parameters differ from the reference over the recorded contributors at versions {bad}")
    assert_identical(comm, w, "final parameters")


@pytest.mark.timeout(60)
def test_backup_one_straggler_matches_reference_and_converges():
    comm = MPI.COMM_WORLD
    p = comm.Get_size()
    if p < 2:
        pytest.skip("backup workers need p >= 2 (b = 1 < p)")
    steps = 24
    bw, w, hist = run(comm, 1, steps)
    check_against_reference(comm, bw, w, hist, steps, 1)
    target = np.mean(targets(p), axis=0)
    err0, err = np.linalg.norm(target), np.linalg.norm(w - target)
    all_ok(comm, err < 0.05 and err < 1e-2 * err0, f"did not converge: |w - target| = {err:.3g} (start {err0:.3g})")
    roles = [rec.role for rec in bw.records]
    if comm.Get_rank() == p - 1 and p > 2:
        # the straggler sleeps 5x the others' compute: it must have been left out at least once
        assert "late" in roles, f"straggler was never left out: {roles}"


@pytest.mark.timeout(60)
def test_backup_zero_is_plain_synchronous_bit_for_bit():
    comm = MPI.COMM_WORLD
    r, p = comm.Get_rank(), comm.Get_size()
    steps = 12
    reduce = default_reduce("ring")
    bw, w, hist = run(comm, 0, steps, straggle=True, reduce=reduce)
    c = targets(p)[r]
    plain = np.zeros(N_PARAM)
    data = comm.Dup()
    for t in range(steps):
        g = plain - c
        reduce(g, data)
        plain -= LR * g
        all_ok(comm, np.array_equal(plain, hist[t + 1]), f"step {t}: b=0 differs from plain synchronous SGD")
    data.Free()
    all_ok(comm, all(len(d.contributors) == p for d in bw.decisions), "b=0 left a rank out")
    assert_identical(comm, w, "final parameters")


@pytest.mark.timeout(60)
def test_backup_with_sync_points_and_staleness():
    comm = MPI.COMM_WORLD
    p = comm.Get_size()
    if p < 3:
        pytest.skip("needs p >= 3 for b = 1 with a stale contributor next to two fresh ones")
    steps = 20
    bw, w, hist = run(comm, 1, steps, staleness=10, sync_every=6)
    check_against_reference(comm, bw, w, hist, steps, 1)
    all_ok(comm, all(d.step - s <= 10 for d in bw.decisions for s in d.contributor_steps), "staleness bound broken")
    # the 5x straggler is late nearly every step, and a bound of 10 steps admits its late gradients
    all_ok(comm, any(d.stale for d in bw.decisions), "no stale gradient was ever added")


@pytest.mark.timeout(30)
def test_backup_rejects_bad_settings_on_every_rank():
    comm = MPI.COMM_WORLD
    r, p = comm.Get_rank(), comm.Get_size()
    with pytest.raises(ValueError, match="0 <= b < p"):
        BackupWorkers(comm, p)
    if p > 1:
        with pytest.raises(ValueError, match="disagree"):
            BackupWorkers(comm, 0 if r == 0 else 1)
