"""``--mode ps`` under pytest-mpi: BSP equals the allreduce trainer, the SSP bound holds, ASP learns, resume is exact.

PS needs a worker besides the servers: a test whose S servers leave no worker at this p skips with that reason.

Tolerance (BSP with W > 1 workers against one rank): the same sums in another association (W partial gradients
summed in worker order instead of one matmul over the batch) differ by a few ulps per step in float64; nine SGD
steps amplify that far less than 1e3, so rtol 1e-9 / atol 1e-11 is loose against rounding while a missing,
doubled or stale worker gradient (order 1e-3) fails by many orders of magnitude. With one worker the gradient is
computed exactly as on one rank and the server applies the same update kernel to its shard: bitwise.
"""
import os
import tempfile

import numpy as np
import pytest
from mpi4py import MPI

from tests.mpi_util import all_ok, assert_identical
from tests.test_backup_train_mpi import train

pytestmark = pytest.mark.mpi

EXACT = ["--dtype", "float64", "--hidden", "24,12", "--bucket-mb", "0.002", "--quiet", "--lr", "0.05",
         "--momentum", "0.9", "--weight-decay", "1e-3", "--heartbeat-interval", "0.2", "--heartbeat-timeout", "5"]
DIGITS = ["--dataset", "digits", "--hidden", "64", "--kernel", "numpy", "--quiet", "--heartbeat-interval", "0.2",
          "--heartbeat-timeout", "5"]


def _need(p, servers, workers=1):
    if p < servers + workers:
        pytest.skip(f"--servers {servers} needs p >= {servers + workers} (got p={p})")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("servers", [1, 2])
@pytest.mark.parametrize("batch", [7, 2])  # 2 rows: with 3-4 workers some hold no rows in every step
def test_bsp_equals_the_allreduce_trainer(servers, batch):
    comm = MPI.COMM_WORLD
    p = comm.Get_size()
    _need(p, servers)
    argv = EXACT + ["--batch-size", str(batch), "--max-steps", "9"]
    tr, res = train(comm, argv + ["--mode", "ps", "--servers", str(servers)])
    ref, _ = train(MPI.COMM_SELF, argv, plugins_on=False)
    assert_identical(comm, tr.optimizer.params, "parameters")
    moved = not np.allclose(ref.optimizer.params, ref.model.init(0))
    if p - servers == 1:
        ok = np.array_equal(tr.optimizer.params, ref.optimizer.params)
    else:
        ok = np.allclose(tr.optimizer.params, ref.optimizer.params, rtol=1e-9, atol=1e-11)
    all_ok(comm, ok and moved, f"PS BSP with {p - servers} worker(s) equals the 1-rank allreduce trainer")
    all_ok(comm, np.array_equal(tr.optimizer.velocity, ref.optimizer.velocity) if p - servers == 1 else
           np.allclose(tr.optimizer.velocity, ref.optimizer.velocity, rtol=1e-9, atol=1e-11), "momentum")
    expect = [int(b) for b in res["ps"]["analytical_bytes"]]
    all_ok(comm, res["bytes_sent"] == expect, f"bytes_sent {res['bytes_sent']} == analytical {expect}")
    all_ok(comm, res["ps"]["clock_gap_max"] == 0 and res["ps"]["roles"][:servers] == ["server"] * servers,
           "BSP answers are never stale")


def _bound_violations(comm, strategy, s):
    """Times prove the SSP bound: worker w began step c only after every worker had posted its push of c - s - 1."""
    starts = comm.allgather(strategy.starts)
    pushes = comm.allgather(dict(strategy.pushes))
    bad = []
    workers = [r for r in range(comm.Get_size()) if starts[r]]
    for w in workers:
        for c, t in starts[w]:
            for v in workers:
                posted = pushes[v].get(c - s - 1)
                if posted is not None and posted > t:
                    bad.append((w, c, v))
    return bad


@pytest.mark.timeout(180)
def test_ssp_bound_is_never_violated_with_a_straggler_and_asp_would():
    comm = MPI.COMM_WORLD
    p = comm.Get_size()
    if p < 3:
        pytest.skip("the SSP bound needs two workers besides the server (p >= 3)")
    s = 2
    slow = ["--straggle", f"{p - 1}:5", "--compute-floor", "0.004", "--max-steps", "30", "--batch-size", "32"]
    tr, res = train(comm, DIGITS + slow + ["--mode", "ps", "--consistency", "ssp", "--staleness", str(s)])
    bad = _bound_violations(comm, tr.strategy, s)
    all_ok(comm, not bad, f"SSP({s}) violated by (worker, clock, other worker) {bad[:5]}")
    all_ok(comm, res["ps"]["clock_gap_max"] <= s, f"server saw a clock gap {res['ps']['clock_gap_max']} > {s}")
    all_ok(comm, res["ps"]["clock_gap_max"] >= 1, "the straggler never made anybody stale: no test of the bound")
    all_ok(comm, res["params_identical"], "parameters differ across ranks after the last sync")
    # the same check on ASP must find violations, or it could not fail
    tr, res = train(comm, DIGITS + slow + ["--mode", "ps", "--consistency", "asp"])
    all_ok(comm, _bound_violations(comm, tr.strategy, s) and res["ps"]["clock_gap_max"] > s,
           "ASP with a 5x straggler stayed within the SSP bound: the check has no teeth")


@pytest.mark.timeout(180)
def test_asp_converges_on_digits():
    comm = MPI.COMM_WORLD
    _need(comm.Get_size(), 1)
    d = comm.bcast(tempfile.mkdtemp(prefix="ra-asp-") if comm.Get_rank() == 0 else None, root=0)
    trace = os.path.join(d, "trace.json")
    _, res = train(comm, DIGITS + ["--epochs", "5", "--mode", "ps", "--consistency", "asp", "--timeline", trace])
    all_ok(comm, res["test_accuracy"] >= 0.95, f"ASP test accuracy {res['test_accuracy']:.4f} < 0.95")
    ok = True
    if comm.Get_rank() == 0:  # the timeline shows the server serving and every worker computing and exchanging
        from ring_allreduce.resilience.timeline import load

        names = {(e["pid"], e["name"]) for e in load(trace) if e.get("ph") == "X"}
        ok = {(0, "serve"), (0, "wait")} <= names
        ok = ok and all({(r, "compute"), (r, "comm")} <= names for r in range(1, comm.Get_size()))
    all_ok(comm, ok, "timeline lacks the server's or a worker's phases")
    all_ok(comm, res["params_identical"], "parameters differ across ranks")
    expect = [int(b) for b in res["ps"]["analytical_bytes"]]
    all_ok(comm, res["bytes_sent"] == expect, f"bytes_sent {res['bytes_sent']} == analytical {expect}")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("consistency", ["bsp", "ssp"])
def test_checkpoint_resume_of_server_state(consistency):
    comm = MPI.COMM_WORLD
    p = comm.Get_size()
    servers = 2 if p >= 3 else 1
    _need(p, servers)
    d = comm.bcast(tempfile.mkdtemp(prefix="ra-ps-") if comm.Get_rank() == 0 else None, root=0)
    argv = EXACT + ["--batch-size", "7", "--mode", "ps", "--servers", str(servers), "--consistency", consistency]
    if consistency == "ssp":
        argv += ["--staleness", "1"]
    _, straight = train(comm, argv + ["--max-steps", "8"])
    train(comm, argv + ["--max-steps", "4", "--checkpoint-dir", d, "--checkpoint-every", "4"])
    tr, resumed = train(comm, argv + ["--max-steps", "8", "--checkpoint-dir", d, "--resume"])
    all_ok(comm, resumed["steps"] == 8 and resumed["ps"]["steps"] == 4, "the resumed run did not take steps 4..7")
    all_ok(comm, resumed["params_identical"], "parameters differ across ranks after resuming")
    if consistency == "bsp":
        all_ok(comm, resumed["param_digests"] == straight["param_digests"], "BSP resume is not bitwise")
        ok = os.path.exists(os.path.join(d, "checkpoint.npz"))
        all_ok(comm, ok, "no checkpoint written")
