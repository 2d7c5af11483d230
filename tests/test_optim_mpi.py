"""The framework-agnostic core (:class:`ring_allreduce.optim.GradientBuckets`) with NumPy parameter lists, under
``mpiexec -n N``: reduced gradients equal the exact mean, bitwise across ranks; out-of-order reports; layout and
setting mismatches raise the same error on every rank; compression; layout grouping (no MPI needed)."""
import numpy as np
import pytest

from ring_allreduce.errors import ArgumentError, MismatchError
from ring_allreduce.optim import GradientBuckets, Layout
from tests.mpi_util import all_ok, assert_identical

SPECS = [("b3", (3,), np.float64), ("w3", (3, 16), np.float64), ("b2", (16,), np.float64),
         ("w2", (16, 16), np.float64), ("b1", (16,), np.float64), ("w1", (16, 12), np.float64)]


def _world():
    from mpi4py import MPI

    return MPI.COMM_WORLD


def grads(rank, step):
    rng = np.random.default_rng([rank, step])
    return [rng.integers(-50, 50, size=s).astype(np.float64) for _, s, _ in SPECS]  # exact sums


@pytest.mark.mpi
@pytest.mark.parametrize("order", ["backward", "shuffled"])
@pytest.mark.parametrize("op", ["sum", "avg"])
def test_grads_reduced_exactly(order, op):
    comm = _world()
    p, r = comm.Get_size(), comm.Get_rank()
    core = GradientBuckets(SPECS, comm, op=op, algorithm="ring", bucket_mb=0.0005)
    all_ok(comm, len(core.buckets) >= 3, f"several buckets: {core.layout.buckets}")
    for step in range(3):
        g = grads(r, step)
        idx = list(range(len(SPECS)))
        if order == "shuffled":  # each rank reports in its own order; plans still start in bucket order
            np.random.default_rng([r, step, 9]).shuffle(idx)
        for i in idx:
            core.grad_ready(i, g[i])
        core.wait()
        for i in range(len(SPECS)):
            want = sum(grads(q, step)[i] for q in range(p))
            if op == "avg":
                want = want / p
            all_ok(comm, np.array_equal(core.grad(i), want), f"step {step} param {i}")
            assert_identical(comm, core.grad(i), SPECS[i][0])
        all_ok(comm, [s[0] for s in core.spans] == list(range(len(core.buckets))), "spans per bucket")
    core.free()


@pytest.mark.mpi
def test_unreported_gradient_counts_as_zero_and_buckets_start_early():
    comm = _world()
    core = GradientBuckets(SPECS, comm, op="sum", bucket_mb=0.0005)
    g = grads(comm.Get_rank(), 0)
    for i in range(len(SPECS) - 1):  # w1 never reported
        core.grad_ready(i, g[i])
    early = [s for s in core.spans]  # spans of the previous step only (none yet)
    started = [b.started for b in core.buckets]
    core.wait()
    all_ok(comm, early == [] and started[0] and not started[-1], f"started before wait: {started}")
    all_ok(comm, np.all(core.grad(len(SPECS) - 1) == 0), "unreported gradient is zero")
    all_ok(comm, core.spans[0][3] and not core.spans[-1][3], f"early flags: {core.spans}")
    with pytest.raises(RuntimeError, match="twice"):
        core.grad_ready(0, g[0])
        core.grad_ready(0, g[0])
    core.wait()
    core.free()


@pytest.mark.mpi
def test_compressed_core_identical_across_ranks():
    comm = _world()
    core = GradientBuckets(SPECS, comm, op="avg", algorithm="ring", bucket_mb=0.0005, compression="fp16")
    for step in range(2):
        g = grads(comm.Get_rank(), step)
        for i in range(len(SPECS)):
            core.grad_ready(i, g[i])
        core.wait()
        for i in range(len(SPECS)):
            want = sum(grads(q, step)[i] for q in range(comm.Get_size())) / comm.Get_size()
            all_ok(comm, np.allclose(core.grad(i), want, rtol=2e-3, atol=0.1), "fp16 close to the mean")
            assert_identical(comm, core.grad(i), SPECS[i][0])
    with pytest.raises(ArgumentError, match="compression needs floating-point"):
        GradientBuckets([("i", (3,), np.int64)], comm, compression="fp16")


@pytest.mark.mpi
def test_mismatch_names_parameter_and_ranks():
    comm = _world()
    p, r = comm.Get_size(), comm.Get_rank()
    if p == 1:
        pytest.skip("a mismatch needs two ranks")
    specs = list(SPECS)
    if r == 1:
        specs[3] = ("w2", (16, 15), np.float64)
    try:
        GradientBuckets(specs, comm)
        msg = None
    except MismatchError as e:
        msg = str(e)
    msgs = comm.allgather(msg)
    all_ok(comm, msg is not None and len(set(msgs)) == 1 and "w2 [16, 15] float64 on rank(s) [1]" in msg, str(msgs))
    with pytest.raises(ArgumentError, match=r"rank\(s\) \[0\]"):
        GradientBuckets(SPECS, comm, op="bogus" if r == 0 else "sum")


def test_layout_groups_by_size_and_dtype():
    lay = Layout([("a", (4,), np.float32), ("b", (4,), np.float32), ("c", (2,), np.float64), ("d", (300,), "f4")],
                 bucket_mb=32 / 2 ** 20)
    assert lay.buckets == [(0, 2), (2, 3), (3, 4)]
    assert lay.offsets == [0, 4, 0, 0]
    assert Layout([("a", (4,), "f4"), ("b", (4,), "f4")], 0).buckets == [(0, 2)]
    assert Layout([], 1).buckets == []
