"""Bad or disagreeing arguments: every rank raises the same error before any data moves; nothing hangs."""
import numpy as np
import pytest

from ring_allreduce import ArgumentError, MismatchError, allreduce
from tests.mpi_util import all_ok, raised, same_error_everywhere

pytestmark = pytest.mark.mpi


@pytest.fixture(scope="module")
def comm():
    from mpi4py import MPI

    return MPI.COMM_WORLD


def test_count_mismatch(comm):
    if comm.size < 2:
        pytest.skip("needs two ranks to disagree")
    n = 10 if comm.rank != 1 else 11
    err = raised(lambda: allreduce(np.ones(n, np.float32), comm, algorithm="ring"))
    same_error_everywhere(comm, err, MismatchError, "count", "11 on rank(s) [1]")
    assert set(err.differences) == {"count"}


def test_dtype_op_and_algorithm_mismatch(comm):
    if comm.size < 2:
        pytest.skip("needs two ranks to disagree")
    last = comm.rank == comm.size - 1
    dt = np.float64 if last else np.float32
    err = raised(lambda: allreduce(np.ones(4, dt), comm, op="max" if last else "sum",
                                         algorithm="tree" if last else "ring"))
    same_error_everywhere(comm, err, MismatchError, "dtype", "op", "algorithm", f"rank(s) [{comm.size - 1}]")


def test_local_argument_error_on_one_rank_raises_everywhere(comm):
    x = np.ones(20, np.float32)
    bad = x[::2] if comm.rank == comm.size - 1 else x[:10]
    err = raised(lambda: allreduce(bad, comm))
    same_error_everywhere(comm, err, ArgumentError, f"rank {comm.size - 1}", "C-contiguous")


def test_unknown_algorithm_lists_valid_names_everywhere(comm):
    err = raised(lambda: allreduce(np.ones(3), comm, algorithm="rnig"))
    same_error_everywhere(comm, err, ArgumentError, "valid names", "rabenseifner")


def test_intercommunicator_rejected(comm):
    if comm.size < 2:
        pytest.skip("an intercommunicator needs two groups")
    color = comm.rank % 2
    local = comm.Split(color, comm.rank)
    inter = local.Create_intercomm(0, comm, 1 - color, tag=7)
    try:
        with pytest.raises(ArgumentError, match="intracommunicator"):
            allreduce(np.ones(3), inter)
    finally:
        inter.Free()
        local.Free()


def test_check_still_works_after_errors(comm):
    """After a raised mismatch the communicator is clean: the next call succeeds on every rank."""
    y = allreduce(np.full(5, comm.rank, np.int64), comm)
    all_ok(comm, np.array_equal(y, np.full(5, comm.size * (comm.size - 1) // 2)), "allreduce after errors")


def test_check_can_be_turned_off(comm, monkeypatch):
    monkeypatch.setenv("RING_ALLREDUCE_CHECK", "0")
    y = allreduce(np.ones(7, np.float64), comm, algorithm="recursive_doubling")
    all_ok(comm, np.array_equal(y, np.full(7, float(comm.size))), "check off")


def _bad_calls(x):
    """(what, x, out) a rank can get wrong by itself, each with x's count and dtype (so the cached key matches)."""
    ro = np.empty_like(x)
    ro.flags.writeable = False
    x_ro = x.copy()
    x_ro.flags.writeable = False
    wide = np.zeros(2 * x.size, x.dtype)
    return [
        ("read-only out", x, ro, "read-only"),
        ("read-only x in place", x_ro, x_ro, "read-only"),
        ("strided x", np.zeros(2 * x.size, x.dtype)[::2], None, "C-contiguous"),
        ("Fortran-order x", np.zeros((2, x.size // 2), x.dtype, order="F"), None, "C-contiguous"),
        ("Fortran-order out", x.reshape(2, -1), np.zeros((2, x.size // 2), x.dtype, order="F"), "C-contiguous"),
        ("out of another shape", x, np.empty((2, x.size // 2), x.dtype), "shape"),
        ("out of another 2-D shape", x.reshape(2, -1), np.empty((x.size // 2, 2), x.dtype), "shape"),
        ("out of another length", x, np.empty(x.size + 1, x.dtype), "shape"),
        ("out of another dtype", x, np.empty(x.size, np.float64), "dtype"),
        ("out overlapping x", wide[: x.size], wide[1: x.size + 1], "overlaps"),
    ]


@pytest.mark.parametrize("algorithm", ["mpi", "auto"])
def test_check_off_local_errors_on_the_cached_native_path(comm, algorithm):
    """With the check off, the cached single-``MPI_Allreduce`` path leaves some buffer checks to mpi4py; every
    local error must still raise ``ArgumentError`` on the rank that made it (here: every rank, so nobody waits),
    and the cache must serve good calls again afterwards."""
    from ring_allreduce import transport

    if comm.size < 2:
        pytest.skip("one rank has no native schedule to cache")
    x = np.arange(8, dtype=np.float32) + comm.rank
    want = np.arange(8, dtype=np.float32) * comm.size + comm.size * (comm.size - 1) / 2
    allreduce(x, comm, algorithm=algorithm, check=False)  # validates and caches
    s = transport.of(comm).plans.get((8, x.dtype, "sum", algorithm, None))
    if s is None or s.native is None:
        pytest.skip(f"{algorithm} does not resolve to the native call at 8 floats here")
    failed = []
    for what, bx, bout, needle in _bad_calls(x):
        err = raised(lambda: allreduce(bx, comm, algorithm=algorithm, out=bout, check=False))
        if not (isinstance(err, ArgumentError) and needle in str(err)):
            failed.append(f"{what}: {err!r}")
    out = np.empty_like(x)
    x2 = x.reshape(2, 4).copy()
    results = [allreduce(x, comm, algorithm=algorithm, check=False),
               allreduce(x, comm, algorithm=algorithm, out=out, check=False),
               allreduce(x2, comm, algorithm=algorithm, out=x2, check=False).reshape(-1)]
    ok = not failed and all(np.array_equal(r, want) for r in results) and results[1] is out
    all_ok(comm, ok, f"check-off native path: {failed or [r.tolist() for r in results]}")


def test_a_registry_change_empties_the_one_shot_caches(comm):
    from ring_allreduce import algorithms, transport

    allreduce(np.ones(3, np.float32), comm, algorithm="mpi", check=False)
    t = transport.of(comm)
    before = len(t.plans)
    algorithms.register("_test_registry_change", algorithms.get("ring"))
    try:
        after = len(t.plans)
    finally:
        algorithms.registry.unregister("_test_registry_change")
    all_ok(comm, before > 0 and after == 0, f"cache sizes {before} -> {after}")
