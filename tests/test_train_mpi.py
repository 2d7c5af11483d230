"""The trainer under MPI: p ranks equal one rank, ranks identical, uneven shards, bytes counted, hooks.

Run under ``mpiexec -n N python -m pytest --with-mpi -m mpi`` for N = 1..5. The reference is the same training
run on ``COMM_SELF`` inside each rank (a single-process run of the same global batches).

Tolerance: p ranks and one rank compute the same sums in a different association (per-shard partial sums, then
the allreduce's order). In float64 each step's gradient then differs by a few ulps (~1e-16 relative) and ten SGD
steps amplify that by far less than 1e3, so rtol 1e-9 / atol 1e-11 is loose against rounding yet a missing,
doubled or mis-scaled shard (a change of order 1e-3 in the parameters) fails by eight orders of magnitude.
"""
import numpy as np
import pytest

from ring_allreduce import schedules
from ring_allreduce.train import cli, hooks
from ring_allreduce.train.buckets import OVERLAP_MODES
from tests.mpi_util import all_ok, assert_identical

pytestmark = pytest.mark.mpi

BASE = ["--dtype", "float64", "--hidden", "24,12", "--max-steps", "9", "--bucket-mb", "0.002", "--quiet",
        "--lr", "0.05", "--momentum", "0.9", "--weight-decay", "1e-3"]


def _run(argv, comm, setup_hook=None):
    trainer = cli.build(cli.parse(argv), comm)
    if setup_hook:
        setup_hook(trainer)
    result = trainer.fit()
    return trainer, result


def _world():
    from mpi4py import MPI

    return MPI.COMM_WORLD, MPI.COMM_SELF


@pytest.mark.parametrize("overlap", OVERLAP_MODES)
@pytest.mark.parametrize("algorithm", ["ring", "auto"])
@pytest.mark.parametrize("batch", [7, 3])  # 3 rows: at p = 4, 5 some ranks hold no rows in every step
def test_p_ranks_equal_one_rank(overlap, algorithm, batch):
    world, self_ = _world()
    argv = BASE + ["--overlap", overlap, "--algorithm", algorithm, "--batch-size", str(batch)]
    tr, res = _run(argv, world)
    ref, _ = _run(argv, self_)
    assert_identical(world, tr.optimizer.params, "parameters")
    ok = np.allclose(tr.optimizer.params, ref.optimizer.params, rtol=1e-9, atol=1e-11)
    moved = not np.allclose(ref.optimizer.params, ref.model.init(0))
    all_ok(world, ok and moved and res["params_identical"], "p-rank parameters equal the 1-rank reference")


def _ring_bytes(p, r, count, itemsize):
    sent = sum(b - a for _, (a, b), _, _ in schedules.ring_reduce_scatter(r, p, count))
    sent += sum(b - a for _, (a, b), _, _ in schedules.ring_allgather(r, p, count))
    return sent * itemsize


@pytest.mark.parametrize("overlap", OVERLAP_MODES)
def test_bytes_sent_are_counted_at_the_transport(overlap):
    world, _ = _world()
    p, r = world.Get_size(), world.Get_rank()
    steps = 4
    tr, res = _run(BASE + ["--overlap", overlap, "--algorithm", "ring", "--batch-size", "8",
                           "--max-steps", str(steps)], world)
    per_step = sum(_ring_bytes(p, r, b.buffer.size, 8) for b in tr.optimizer.buckets)
    per_step += _ring_bytes(p, r, 3, 8)  # the step statistics (rows, loss, correct) in float64
    expect = steps * per_step if p > 1 else 0
    all_ok(world, res["bytes_sent"][r] == expect and len(res["bytes_sent"]) == p,
           f"bytes_sent {res['bytes_sent'][r]} == {expect}")


class _CountingHook:
    """A test hook: sums like the default one and keeps a per-rank counter (checkpointed state)."""

    def __init__(self, comm):
        self.comm, self.calls = comm, 0

    def state_dict(self):
        return {"calls": self.calls, "trace": np.arange(3.0) + self.comm.Get_rank()}

    def load_state_dict(self, d):
        self.calls = d["calls"]
        self.loaded = d


def _hook(state, bucket):
    state.calls += 1
    hooks.reduce_sum(state.comm, bucket.buffer, "ring")
    return bucket.buffer


def test_registered_hook_sees_every_bucket_and_its_state_survives_a_checkpoint(tmp_path_factory):
    world, self_ = _world()
    d = world.bcast(str(tmp_path_factory.mktemp("ck")) if world.Get_rank() == 0 else None, root=0)
    argv = BASE + ["--batch-size", "6", "--max-steps", "5", "--checkpoint-dir", d, "--checkpoint-every", "5"]
    states = []

    def install(trainer):
        st = _CountingHook(trainer.optimizer.comm)
        trainer.optimizer.register_comm_hook(st, _hook)
        states.append(st)

    tr, _ = _run(argv, world, install)
    ref, _ = _run(BASE + ["--batch-size", "6", "--max-steps", "5"], self_)
    n_b = len(tr.optimizer.buckets)
    ok = states[0].calls == 5 * n_b and np.allclose(tr.optimizer.params, ref.optimizer.params, rtol=1e-9,
                                                    atol=1e-11)
    tr2, _ = _run(argv + ["--max-steps", "5"], world, install)  # fresh trainer, then load
    ok2 = tr2.load_checkpoint(d) and states[1].calls == 5 * n_b
    ok2 = ok2 and np.array_equal(states[1].loaded["trace"], np.arange(3.0) + world.Get_rank())
    ok2 = ok2 and np.array_equal(tr2.optimizer.params, tr.optimizer.params)
    all_ok(world, ok and ok2, "custom hook called per bucket; its per-rank state restored")


def test_strategy_contributions_are_rescaled_to_the_rows_that_arrived():
    """A strategy in which only rank 0 contributes: the update is rank 0's shard mean, identical on all ranks."""
    world, self_ = _world()
    from ring_allreduce.train.data import shard
    from ring_allreduce.train.trainer import StepResult

    class OnlyRankZero:
        def __call__(self, trainer, X, y, n_global):
            opt = trainer.optimizer
            opt.begin()
            if trainer.rank != 0:
                X, y = X[:0], y[:0]
            loss, correct = trainer.model.loss_and_grad(opt.params, X, y, opt.grad, 1.0 / n_global,
                                                        on_ready=opt.grad_ready)
            opt.synchronize()
            s = opt.reduce_stats(np.array([X.shape[0], loss, correct], dtype=np.float64))
            return StepResult(int(s[0]), float(s[1]), int(s[2]), [0])

    argv = BASE + ["--batch-size", "10", "--max-steps", "3", "--lr-decay", "none"]
    tr, _ = _run(argv, world, lambda t: setattr(t, "strategy", OnlyRankZero()))
    # reference: one process whose global batches are rank 0's shards
    ref = cli.build(cli.parse(argv), self_)
    from ring_allreduce.train.data import batches, epoch_order

    bl = batches(epoch_order(0, 0, len(ref.task.train)), 10)
    for gb in bl[:3]:
        ref.train_step(shard(gb, 0, world.Get_size()))
    assert_identical(world, tr.optimizer.params, "parameters")
    all_ok(world, np.allclose(tr.optimizer.params, ref.optimizer.params, rtol=1e-9, atol=1e-11),
           "contributors-only average")


@pytest.mark.parametrize("extra", [["--model", "logreg"],
                                   ["--dataset", "synthetic", "--synthetic-task", "regression", "--samples", "200",
                                    "--features", "6", "--classes", "2"]])
def test_linear_models_p_ranks_equal_one_rank(extra):
    world, self_ = _world()
    argv = BASE + ["--batch-size", "11", "--overlap", "thread"] + extra
    tr, _ = _run(argv, world)
    ref, _ = _run(argv, self_)
    assert_identical(world, tr.optimizer.params, "parameters")
    all_ok(world, np.allclose(tr.optimizer.params, ref.optimizer.params, rtol=1e-9, atol=1e-11), "linear models")


def test_a_checkpoint_written_at_p_ranks_resumes_at_one_rank(tmp_path_factory):
    """Readable with any p: 4 steps on p ranks + 5 on one rank equal 9 steps on one rank (same global batches)."""
    world, self_ = _world()
    d = world.bcast(str(tmp_path_factory.mktemp("anyp")) if world.Get_rank() == 0 else None, root=0)
    argv = BASE + ["--batch-size", "9", "--checkpoint-dir", d]
    _run(argv + ["--max-steps", "4", "--checkpoint-every", "4"], world)
    ref, _ = _run(argv[:-2] + ["--max-steps", "9"], self_)
    resumed = cli.build(cli.parse(argv + ["--max-steps", "9"]), self_)
    resumed.checkpoint_dir = None  # every rank reads the file; none writes it again
    ok = resumed.load_checkpoint(d) and resumed.global_step == 4
    world.Barrier()
    resumed.fit()
    ok = ok and resumed.global_step == 9
    all_ok(world, ok and np.allclose(resumed.optimizer.params, ref.optimizer.params, rtol=1e-9, atol=1e-11),
           "p-rank checkpoint resumed on one rank")


def test_ranks_with_different_flags_all_fail_with_the_same_error():
    from ring_allreduce.errors import MismatchError

    world, _ = _world()
    if world.Get_size() == 1:
        pytest.skip("needs two ranks to disagree")
    lr = "0.05" if world.Get_rank() == 0 else "0.07"
    tr = cli.build(cli.parse(BASE + ["--batch-size", "4", "--lr", lr]), world)
    with pytest.raises(MismatchError, match="different training configuration") as e:
        tr.fit()
    msgs = world.allgather(str(e.value))
    all_ok(world, len(set(msgs)) == 1, "same message on every rank")
    hidden = "24,12" if world.Get_rank() == 0 else "24,13"  # a different layout: caught before the broadcast
    with pytest.raises(MismatchError, match="different model/bucket layout") as e:
        cli.build(cli.parse(BASE + ["--batch-size", "4", "--hidden", hidden]), world)
    msgs = world.allgather(str(e.value))
    all_ok(world, len(set(msgs)) == 1, "same message on every rank")


def test_overlap_modes_give_bitwise_identical_parameters_with_the_ring():
    """Thread, nonblocking ring and no overlap run the same ring schedule: same sums, same bytes."""
    world, _ = _world()
    digests = []
    for overlap in OVERLAP_MODES:
        tr, res = _run(BASE + ["--overlap", overlap, "--algorithm", "ring", "--batch-size", "13"], world)
        digests.append(res["param_digests"][0])
    all_ok(world, len(set(digests)) == 1, f"digests per overlap mode {digests}")
