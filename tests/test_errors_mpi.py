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
