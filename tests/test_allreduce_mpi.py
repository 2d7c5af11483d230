"""AllReduce across ranks: every algorithm x op x dtype x count, vs MPI.Allreduce and a float64 reference.

Run under ``mpiexec -n N`` (tests/run.py does N = 1..5). Integers must equal ``MPI.Allreduce`` exactly. Floats are
compared with a float64 reference: summing p values in any order in a dtype with unit roundoff u errs by at most
(p-1)*u*sum|x_i| (the standard bound for recursive summation; doubled for float64, whose reference rounds as much), plus one rounding of the result (u*|ref|); min/max
are exact and the small products used here are exact. And every rank must hold bit-identical bytes.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ring_allreduce import allreduce, algorithm_names
from ring_allreduce.ops import OPS
from tests.mpi_util import all_ok, assert_identical, rank_input

pytestmark = pytest.mark.mpi
DTYPES = ["float16", "float32", "float64", "int32", "int64"]
HAND = ["ring", "tree", "recursive_doubling", "rabenseifner"]


@pytest.fixture(scope="module")
def comm():
    from mpi4py import MPI

    return MPI.COMM_WORLD


def reference(comm, n, dtype, op, seed):
    """The expected result and an elementwise error bound, built from every rank's (reproducible) input."""
    p = comm.size
    xs = np.stack([rank_input(seed, r, n, dtype, op) for r in range(p)]).astype(np.float64)
    dt = np.dtype(dtype)
    if dt.kind == "i":
        from mpi4py import MPI

        mine = rank_input(seed, comm.rank, n, dtype, op)
        ref = np.empty_like(mine)
        comm.Allreduce(mine, ref, {"avg": MPI.SUM, "sum": MPI.SUM, "prod": MPI.PROD, "min": MPI.MIN,
                                   "max": MPI.MAX}[op])
        if op == "avg":
            ref = ref // p
        return ref.astype(np.float64), np.zeros(n)
    f = {"sum": np.sum, "avg": np.sum, "prod": np.prod, "min": np.min, "max": np.max}[op]
    ref = f(xs, axis=0)
    u = np.finfo(dt).eps / 2
    if op in ("sum", "avg"):
        # for float64 inputs the float64 reference rounds as much as the result does, hence the factor 2
        bound = (p - 1) * u * np.abs(xs).sum(axis=0) * (2 if dt == np.float64 else 1)
        if op == "avg":
            ref, bound = ref / p, bound / p
        if dt == np.float16 and op == "avg":
            bound = bound + p * u * np.abs(xs).sum(axis=0) / p  # each input is divided by p (one rounding each)
    else:
        bound = np.zeros(n)
    return ref, bound + u * np.abs(ref) + np.finfo(dt).tiny


def check_one(comm, alg, dtype, op, n, inplace, seed=1):
    x = rank_input(seed, comm.rank, n, dtype, op)
    ref, bound = reference(comm, n, dtype, op, seed)
    if inplace:
        y = x.copy()
        res = allreduce(y, comm, op=op, algorithm=alg, out=y)
        ok = res is y
    else:
        before = x.copy()
        res = allreduce(x, comm, op=op, algorithm=alg)
        ok = np.array_equal(x, before)  # out-of-place must not modify the input
    ok = ok and res.shape == x.shape and res.dtype == x.dtype
    err = np.abs(res.astype(np.float64) - ref)
    ok = ok and bool(np.all(err <= bound))
    all_ok(comm, ok, f"{alg} {dtype} {op} n={n} inplace={inplace} (max err {err.max() if n else 0})")
    assert_identical(comm, res, f"{alg} {dtype} {op} n={n}")


@pytest.mark.parametrize("alg", HAND + ["mpi", "auto"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_op_and_count(comm, alg, dtype):
    p = comm.size
    if alg == "mpi" and dtype == "float16":
        pytest.skip("native float16 depends on the MPI library (MPIX_C_FLOAT16); hand-written paths cover it")
    for n in sorted({0, 1, max(p - 1, 1), 7 * p + 3, 1000, 65537}):
        for op in OPS:
            for inplace in (False, True):
                check_one(comm, alg, dtype, op, n, inplace)


@pytest.mark.parametrize("alg", HAND)
def test_large_count_int32_exact(comm, alg):
    """2**26 elements (256 MiB of int32 per rank) for the ring; a smaller large count for the others."""
    n = 2 ** 26 if alg == "ring" else 2 ** 22 + 7
    x = np.full(n, comm.rank + 1, dtype=np.int32)
    x[::4097] = -3
    y = allreduce(x, comm, op="sum", algorithm=alg)
    ref = np.empty_like(x)
    comm.Allreduce(x, ref)
    all_ok(comm, np.array_equal(y, ref), f"{alg} large int32")
    del x, y, ref


@pytest.mark.parametrize("alg", HAND)
def test_shapes_preserved(comm, alg):
    x = np.arange(2 * 3 * 5, dtype=np.float64).reshape(2, 3, 5) + comm.rank
    y = allreduce(x, comm, algorithm=alg)
    p = comm.size
    expected = np.arange(30, dtype=np.float64).reshape(2, 3, 5) * p + p * (p - 1) / 2
    all_ok(comm, y.shape == (2, 3, 5) and np.array_equal(y, expected), f"{alg} shape")


@pytest.mark.parametrize("alg", HAND)
def test_float16_avg_does_not_overflow(comm, alg):
    x = np.full(33, 60000, np.float16)
    y = allreduce(x, comm, op="avg", algorithm=alg)
    all_ok(comm, bool(np.all(np.isfinite(y))) and bool(np.allclose(y.astype(float), 60000, rtol=2e-3)),
           f"{alg} fp16 avg overflow")


def test_ring_segmented_path(comm):
    """Force tiny segments so the double-buffered, multi-message reduce-scatter is exercised at every size."""
    from ring_allreduce.algorithms.ring import ring
    from ring_allreduce.kernels import get

    for n in (0, 1, 5, 17, 1000, 4099):
        for seg in (4, 12, 64):
            x = rank_input(3, comm.rank, n, "float32")
            dst = np.empty_like(x)
            if comm.size > 1 and n:
                ring(comm, x, dst, "sum", get("numpy"), None, segment_bytes=seg)
            else:
                dst[:] = x
            ref, bound = reference(comm, n, "float32", "sum", 3)
            all_ok(comm, bool(np.all(np.abs(dst - ref) <= bound)), f"segmented ring n={n} seg={seg}")
            assert_identical(comm, dst)


def test_registered_algorithms_all_tested(comm):
    """Any algorithm added to the registry is exercised here too (beyond those listed explicitly above)."""
    for alg in algorithm_names():
        for dtype in ("float32", "int64"):
            for n in (0, 1, 2 * comm.size + 1):
                check_one(comm, alg, dtype, "sum", n, inplace=False, seed=7)


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(alg=st.sampled_from(HAND + ["mpi", "auto"]), op=st.sampled_from(OPS), dtype=st.sampled_from(DTYPES),
       n=st.integers(min_value=0, max_value=3000), inplace=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_property_against_reference(comm, alg, op, dtype, n, inplace, seed):
    """Derandomized so every rank draws the same examples; the assertions are collective, so shrinking agrees."""
    if alg == "mpi" and dtype == "float16":
        return
    check_one(comm, alg, dtype, op, n, inplace, seed)
