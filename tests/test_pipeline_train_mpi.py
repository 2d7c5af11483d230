"""``--pipeline-stages`` under pytest-mpi: equal to one process, bitwise resume, timeline lanes, report.

A layout that does not fit this p (p not a multiple of S) skips with that reason.

Tolerance (float64): the pipeline sums each layer's gradient over micro-batches (and replicas) in another
association than one matmul over the whole batch; the results differ by a few ulps per step, which eight SGD
steps amplify by far less than 1e3, so ``rtol 1e-10, atol 1e-12`` is loose against rounding, while a dropped,
doubled or misrouted micro-batch (a gradient term of order 1e-3) fails by many orders of magnitude.
"""
import json

import numpy as np
import pytest
from mpi4py import MPI

from tests.mpi_util import all_ok, assert_identical
from tests.test_backup_train_mpi import train

pytestmark = pytest.mark.mpi

EXACT = ["--dataset", "synthetic", "--samples", "96", "--features", "12", "--classes", "5", "--dtype", "float64",
         "--hidden", "16,12,8", "--kernel", "numpy", "--quiet", "--lr", "0.05", "--momentum", "0.9",
         "--weight-decay", "1e-3", "--heartbeat-interval", "0.2", "--heartbeat-timeout", "5"]


def _layout(p, stages):
    if p % stages:
        pytest.skip(f"--pipeline-stages {stages} needs p divisible by {stages} (got p={p})")
    if p // stages > 2:
        pytest.skip(f"p={p}: {p // stages} replicas of {stages} stages is covered by smaller layouts")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stages,micro,schedule", [(2, 4, "gpipe"), (3, 3, "gpipe"), (2, 3, "1f1b"),
                                                   (3, 5, "1f1b"), (5, 2, "gpipe")])
@pytest.mark.parametrize("batch", [20, 5])  # 5 rows: some micro-batches of a replica are empty
def test_pipeline_equals_one_process(stages, micro, schedule, batch):
    comm = MPI.COMM_WORLD
    p = comm.Get_size()
    _layout(p, stages)
    argv = EXACT + ["--batch-size", str(batch), "--max-steps", "8"]
    if stages > 4:  # one layer per stage at least: five layers
        argv += ["--hidden", "16,12,8,8"]
    tr, res = train(comm, argv + ["--pipeline-stages", str(stages), "--micro-batches", str(micro),
                                  "--pipeline-schedule", schedule])
    ref, _ = train(MPI.COMM_SELF, argv, plugins_on=False)
    assert_identical(comm, tr.optimizer.params, "parameters")
    moved = not np.allclose(ref.optimizer.params, ref.model.init(0))
    ok = np.allclose(tr.optimizer.params, ref.optimizer.params, rtol=1e-10, atol=1e-12)
    all_ok(comm, ok and moved, f"{stages} stages x {p // stages} replica(s) equal one process")
    all_ok(comm, np.allclose(tr.optimizer.velocity, ref.optimizer.velocity, rtol=1e-10, atol=1e-12), "momentum")
    rep = res["pipeline"]
    expect = _activation_bytes(tr, rep, batch, 8)
    all_ok(comm, rep["activation_bytes"] == expect, f"activation bytes {rep['activation_bytes']} == {expect}")
    all_ok(comm, rep["stages"] == stages and rep["replicas"] == p // stages
           and [s["layers"] for s in rep["per_stage"]][0][0] == 0
           and rep["per_stage"][-1]["layers"][1] == tr.model.n_layers, f"layout {rep['per_stage']}")


def _shared_dir(tmp_path_factory, name: str) -> str:
    """A temporary folder made by rank 0, the same path on every rank (this p must fit two stages)."""
    comm = MPI.COMM_WORLD
    _layout(comm.Get_size(), 2)
    return comm.bcast(str(tmp_path_factory.mktemp(name)) if comm.Get_rank() == 0 else None)


def _activation_bytes(tr, rep, batch, itemsize):
    """Per rank: the rows of its replica's share of each step times the widths it sends (forward, backward)."""
    from ring_allreduce.schedules import chunk_bounds
    from ring_allreduce.train.data import batches, epoch_order

    n, sizes, S, R = len(tr.task.train), tr.model.sizes, rep["stages"], rep["replicas"]
    lens = [len(b) for e in range(3) for b in batches(epoch_order(0, e, n), batch)][:tr.global_step]
    out = []
    for r in range(S * R):
        a, b = rep["per_stage"][r % S]["layers"]
        width = (sizes[b] if r % S < S - 1 else 0) + (sizes[a] if r % S > 0 else 0)
        rows = sum(int(np.diff(chunk_bounds(k, R))[r // S]) for k in lens)
        out.append(rows * width * itemsize)
    return out


@pytest.mark.timeout(120)
def test_checkpoint_resume_is_bitwise_and_holds_the_full_vector(tmp_path_factory):
    comm = MPI.COMM_WORLD
    d = _shared_dir(tmp_path_factory, "pipe")
    pipe = ["--batch-size", "16", "--pipeline-stages", "2", "--micro-batches", "3"]
    first, _ = train(comm, EXACT + pipe + ["--max-steps", "6", "--checkpoint-dir", d, "--checkpoint-every", "3"])
    from ring_allreduce.train import checkpoint as ckpt

    arrays, meta = ckpt.load(ckpt.path_in(d))
    all_ok(comm, meta["global_step"] == 6 and np.array_equal(arrays["params"], first.optimizer.params)
           and np.array_equal(arrays["velocity"], first.optimizer.velocity), "the checkpoint holds every stage's part")
    straight, res = train(comm, EXACT + pipe + ["--max-steps", "10"])
    resumed, res2 = train(comm, EXACT + pipe + ["--max-steps", "10", "--checkpoint-dir", d, "--resume"])
    all_ok(comm, res["param_digests"] == res2["param_digests"], "resumed parameters differ from a straight run")
    all_ok(comm, np.array_equal(straight.optimizer.velocity, resumed.optimizer.velocity), "momentum after resume")
    # a full vector resumes at another layout: plain data parallelism goes on from it
    plain, _ = train(comm, EXACT + ["--batch-size", "16", "--max-steps", "10", "--checkpoint-dir", d, "--resume"])
    all_ok(comm, np.allclose(plain.optimizer.params, straight.optimizer.params, rtol=1e-10, atol=1e-12),
           "data-parallel resume from a pipeline checkpoint")


@pytest.mark.timeout(120)
def test_timeline_has_every_stage_and_bubble_is_reported(tmp_path_factory):
    comm, p = MPI.COMM_WORLD, MPI.COMM_WORLD.Get_size()
    d = _shared_dir(tmp_path_factory, "pipetl")
    path = f"{d}/trace.json"
    _, res = train(comm, EXACT + ["--batch-size", "16", "--max-steps", "4", "--pipeline-stages", "2",
                                  "--micro-batches", "4", "--timeline", path])
    ok, what = True, ""
    if comm.Get_rank() == 0:
        with open(path) as fh:
            trace = json.load(fh)
        events = trace["traceEvents"] if isinstance(trace, dict) else trace
        lanes = {(e.get("pid"), e["name"].split(":")[0]) for e in events if e.get("ph") == "X"
                 and e["name"].startswith(("forward", "backward"))}
        pids = {pid for pid, _ in lanes}
        ok = len(pids) == p and all((pid, k) in lanes for pid in pids for k in ("forward", "backward"))
        what = f"forward/backward events of every rank in the trace: {sorted(lanes)}"
    all_ok(comm, comm.bcast(ok), comm.bcast(what))
    rep = res["pipeline"]
    all_ok(comm, rep["bubble_formula"] == 1 / 5 and rep["steps_timed"] == 3
           and all(0 <= s["bubble_fraction"] < 1 for s in rep["per_stage"]), f"bubble report {rep}")
