"""``--local-steps`` under pytest-mpi: H = 1 is synchronous SGD, post-local SGD starts synchronous, ranks agree.

Tolerance (H = 1 against the allreduce trainer on the same ranks): averaging ``w_i = w - lr*(mu*v + g_i)`` weighted
by rows equals ``w - lr*(mu*v + sum of the shares)`` up to the association of the sums: a few ulps per step in
float64, far inside rtol 1e-9 / atol 1e-11 after nine steps, while a missing rank, unweighted uneven shards
(batch 7 over p ranks) or momentum left out of the average differ by order 1e-3. At p = 1 the average is the
identity (weight exactly 1): bitwise.
"""
import numpy as np
import pytest
from mpi4py import MPI

from tests.mpi_util import all_ok, assert_identical
from tests.test_backup_train_mpi import train

pytestmark = pytest.mark.mpi

EXACT = ["--dtype", "float64", "--hidden", "24,12", "--bucket-mb", "0.002", "--quiet", "--lr", "0.05",
         "--momentum", "0.9", "--weight-decay", "1e-3", "--batch-size", "7", "--heartbeat-interval", "0"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("overlap", ["nonblocking", "none"])
def test_local_sgd_with_one_local_step_is_synchronous_sgd(overlap):
    comm = MPI.COMM_WORLD
    argv = EXACT + ["--max-steps", "9", "--overlap", overlap]
    tr, res = train(comm, argv + ["--local-steps", "1"])
    ref, _ = train(comm, argv, plugins_on=False)
    assert_identical(comm, tr.optimizer.params, "parameters")
    if comm.Get_size() == 1:
        ok = np.array_equal(tr.optimizer.params, ref.optimizer.params)
    else:
        ok = np.allclose(tr.optimizer.params, ref.optimizer.params, rtol=1e-9, atol=1e-11)
        ok = ok and np.allclose(tr.optimizer.velocity, ref.optimizer.velocity, rtol=1e-9, atol=1e-11)
    moved = not np.allclose(ref.optimizer.params, ref.model.init(0))
    all_ok(comm, ok and moved, "H=1 local SGD equals the synchronous trainer")
    all_ok(comm, res["local_sgd"]["averagings"] == 9, "H=1 must average after every step")
    expect = [int(b) for b in res["local_sgd"]["analytical_bytes"]]
    all_ok(comm, res["bytes_sent"] == expect, f"bytes_sent {res['bytes_sent']} == analytical {expect}")


@pytest.mark.timeout(120)
def test_post_local_sgd_is_synchronous_before_the_switch_and_then_local():
    comm = MPI.COMM_WORLD
    p = comm.Get_size()
    argv = EXACT + ["--samples", "70", "--dataset", "synthetic", "--features", "6", "--epochs", "2"]
    _, plain = train(comm, argv, plugins_on=False)
    _, late = train(comm, argv + ["--local-steps", "4", "--local-steps-after", "2"])  # never switches
    all_ok(comm, late["param_digests"] == plain["param_digests"], "before the switch: bitwise the plain trainer")
    _, post = train(comm, argv + ["--local-steps", "4", "--local-steps-after", "1"])
    ls = post["local_sgd"]
    # 10 steps per epoch: epoch 1 synchronous, epoch 2 averages after steps 4, 8 and the epoch's last step
    all_ok(comm, ls["synchronous_steps"] == 10 and ls["averagings"] == 3, f"schedule {ls}")
    all_ok(comm, post["params_identical"], "parameters differ across ranks after the last average")
    differs = post["param_digests"] != plain["param_digests"]
    all_ok(comm, differs or p == 1, "local steps changed nothing: were they taken?")
    expect = [int(b) for b in ls["analytical_bytes"]]
    all_ok(comm, post["bytes_sent"] == expect, f"bytes_sent {post['bytes_sent']} == analytical {expect}")


@pytest.mark.timeout(120)
def test_local_sgd_learns_digits():
    comm = MPI.COMM_WORLD
    _, res = train(comm, ["--dataset", "digits", "--hidden", "64", "--kernel", "numpy", "--quiet", "--epochs", "3",
                          "--local-steps", "8", "--heartbeat-interval", "0"])
    all_ok(comm, res["test_accuracy"] >= 0.93, f"H=8 local SGD test accuracy {res['test_accuracy']:.4f}")
    all_ok(comm, res["params_identical"], "parameters differ across ranks")
