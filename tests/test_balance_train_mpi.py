"""``--balance`` under pytest-mpi: a forced uneven split is the equal-shard SGD; measured splits are agreed.

Tolerance (float64): with another split each rank sums other rows before the allreduce adds the partial sums, a
different association of the same terms; ten SGD steps amplify a few ulps by far less than 1e3, so
``rtol 1e-10, atol 1e-12`` is loose against rounding while a gradient weighted by the wrong row count (e.g. the
mean of per-rank means: a relative error of order 1e-1 with these splits) fails by many orders of magnitude.
"""
import numpy as np
import pytest
from mpi4py import MPI

from tests.mpi_util import all_ok, assert_identical
from tests.test_backup_train_mpi import train

pytestmark = pytest.mark.mpi

EXACT = ["--dataset", "synthetic", "--samples", "120", "--features", "12", "--classes", "5", "--dtype", "float64",
         "--hidden", "16", "--kernel", "numpy", "--quiet", "--lr", "0.05", "--momentum", "0.9",
         "--weight-decay", "1e-3", "--heartbeat-interval", "0.2", "--heartbeat-timeout", "5"]


def _speeds(p):
    return ",".join(str(1 + 2 * (r % 3)) for r in range(p))  # 1,3,5,1,3: uneven for every p > 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("batch", [24, 7])
def test_forced_split_equals_equal_shards(batch):
    comm = MPI.COMM_WORLD
    p = comm.Get_size()
    argv = EXACT + ["--batch-size", str(batch), "--max-steps", "10"]
    tr, res = train(comm, argv + ["--balance", "--balance-speeds", _speeds(p)])
    ref, _ = train(comm, argv, plugins_on=False)
    assert_identical(comm, tr.optimizer.params, "parameters")
    rows = res["balance"]["splits"][0]["rows"]
    from ring_allreduce.balance.split import split_counts
    from ring_allreduce.schedules import chunk_bounds

    equal = np.diff(chunk_bounds(batch, p)).tolist()
    all_ok(comm, p == 1 or rows != equal, f"the forced split {rows} differs from equal shards {equal}")
    all_ok(comm, rows == split_counts(batch, [float(s) for s in _speeds(p).split(",")]).tolist(), f"split {rows}")
    moved = not np.allclose(ref.optimizer.params, ref.model.init(0))
    ok = np.allclose(tr.optimizer.params, ref.optimizer.params, rtol=1e-10, atol=1e-12)
    all_ok(comm, ok and moved, "balanced run equals the equal-shard run")


@pytest.mark.timeout(120)
def test_measured_split_is_agreed_and_follows_a_slow_rank():
    comm = MPI.COMM_WORLD
    p = comm.Get_size()
    if p < 2:
        pytest.skip("a slow rank needs another rank to hand rows to (p >= 2)")
    argv = EXACT + ["--batch-size", "24", "--max-steps", "12", "--balance", "--balance-every", "4",
                    "--straggle", f"{p - 1}:4", "--compute-floor", "0.004"]
    tr, res = train(comm, argv)
    splits = res["balance"]["splits"]
    everyone = comm.allgather(splits)
    all_ok(comm, all(s == everyone[0] for s in everyone), "every rank derived the same splits")
    all_ok(comm, len(splits) == 4, f"re-split every 4 steps: {splits}")
    last = splits[-1]["rows"]
    all_ok(comm, sum(last) == 24 and last[p - 1] < min(last[:p - 1]), f"the 4x slow rank gets the fewest rows: {last}")
    assert_identical(comm, tr.optimizer.params, "parameters")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("extra", [["--backup-workers", "1"], ["--compression", "topk", "--compression-ratio", "0.5"]])
def test_balance_runs_with_backup_workers_and_compression(extra):
    comm = MPI.COMM_WORLD
    p = comm.Get_size()
    if p < 2:
        pytest.skip("backup workers and compression need p >= 2")
    tr, res = train(comm, EXACT + ["--batch-size", "24", "--max-steps", "6", "--balance", "--balance-speeds",
                                   _speeds(p)] + extra)
    assert_identical(comm, tr.optimizer.params, "parameters")
    all_ok(comm, res["steps"] == 6 and not np.allclose(tr.optimizer.params, tr.model.init(0)), "trained")
