"""``ring-allreduce train`` with the resilience flags, in-process under pytest-mpi (digits, small MLP).

Checks: ``--backup-workers 0`` (through the backup protocol's plugin path with a straggler) gives bit-identical
parameters to the plain trainer; ``--backup-workers 1`` with a 5x straggler keeps every rank identical, records
p - 1 contributors per step, leaves the straggler out and still learns; the timeline holds every rank's phases.
"""
import os
import tempfile

import pytest
from mpi4py import MPI

from ring_allreduce.resilience.strategy import BackupStep
from tests.mpi_util import all_ok

pytestmark = pytest.mark.mpi

BASE = ["--dataset", "digits", "--hidden", "32", "--kernel", "numpy", "--batch-size", "64", "--epochs", "2",
        "--quiet", "--heartbeat-interval", "0.2", "--heartbeat-timeout", "5"]


def train(comm, argv, plugins_on=True, strategy=None):
    from ring_allreduce.train import cli, plugins

    mods = plugins.discover()
    ap = cli.build_parser(mods)
    args = ap.parse_args(argv)
    cli._validate(ap, args)
    trainer = cli.build(args, comm)
    if plugins_on:
        plugins.call(mods, "after_build", args, trainer)
    if strategy is not None:
        trainer.strategy = strategy
        trainer.callbacks.append(strategy)
    if args.resume:
        assert trainer.load_checkpoint(args.checkpoint_dir)
    result = trainer.fit()
    if plugins_on:
        for extra in plugins.call(mods, "report", args, trainer, result):
            result.update(extra or {})
    return trainer, result


@pytest.mark.timeout(120)
def test_backup_zero_with_straggler_is_bitwise_the_plain_trainer():
    comm = MPI.COMM_WORLD
    p = comm.Get_size()
    straggle = ["--straggle", f"{p - 1}:3", "--compute-floor", "0.001"]
    _, plain = train(comm, BASE + ["--max-steps", "12"], plugins_on=False)
    _, ours = train(comm, BASE + ["--max-steps", "12", "--backup-workers", "0"] + straggle)
    all_ok(comm, plain["param_digests"] == ours["param_digests"], "--backup-workers 0 differs from the plain trainer")
    # the backup strategy itself with b = 0 (the coordinator decides every step: all ranks) is the same SGD
    trainer, proto = train(comm, BASE + ["--max-steps", "12"] + straggle, strategy=BackupStep(0))
    all_ok(comm, plain["param_digests"] == proto["param_digests"], "the b=0 protocol differs from the plain trainer")
    all_ok(comm, len(trainer.strategy.bw.decisions) == 12, "b=0 protocol did not decide every step")
    all_ok(comm, ours["straggle"]["slowed_steps"][p - 1] >= 11 or p == 1, "straggler was not slowed")


@pytest.mark.timeout(120)
def test_backup_one_with_straggler_trains_and_stays_identical():
    comm = MPI.COMM_WORLD
    r, p = comm.Get_rank(), comm.Get_size()
    if p < 2:
        pytest.skip("--backup-workers 1 needs p >= 2")
    d = comm.bcast(tempfile.mkdtemp(prefix="ra-bw-") if r == 0 else None, root=0)
    tl = os.path.join(d, "trace.json")
    trainer, res = train(comm, BASE + ["--backup-workers", "1", "--straggle", f"{p - 1}:5",
                                       "--compute-floor", "0.002", "--timeline", tl])
    all_ok(comm, res["params_identical"], "parameters differ across ranks")
    bw = trainer.strategy.bw
    all_ok(comm, all(len(x.contributors) == p - 1 for x in bw.decisions), "a step had other than p-1 contributors")
    steps = res["steps"]
    all_ok(comm, [x.step for x in bw.decisions] == list(range(steps)), "decisions do not cover every step once")
    contributions = res["backup"]["contributions"]
    all_ok(comm, contributions[p - 1] < steps // 2 or p == 2,
           f"the 5x straggler contributed to {contributions[p - 1]} of {steps} steps")
    all_ok(comm, res["test_accuracy"] > 0.85, f"test accuracy {res['test_accuracy']:.3f} after 2 epochs")
    ok = True
    if r == 0:
        from ring_allreduce.resilience.timeline import load

        events = [e for e in load(tl) if e["ph"] == "X"]
        have = {(e["pid"], e["cat"]) for e in events}
        ok = all((q, ph) in have for q in range(p) for ph in ("compute", "wait", "step"))
        ok &= any(e["cat"] == "comm" for e in events) and any(e["cat"] == "straggle" for e in events)
        os.unlink(tl)
        os.rmdir(d)
    all_ok(comm, ok, "timeline phases")


@pytest.mark.timeout(120)
def test_backup_checkpoint_resumes():
    comm = MPI.COMM_WORLD
    r, p = comm.Get_rank(), comm.Get_size()
    if p < 2:
        pytest.skip("--backup-workers 1 needs p >= 2")
    d = comm.bcast(tempfile.mkdtemp(prefix="ra-bw-ck-") if r == 0 else None, root=0)
    flags = BASE + ["--backup-workers", "1", "--straggle", f"{p - 1}:4", "--compute-floor", "0.001",
                    "--checkpoint-dir", d, "--checkpoint-every", "7"]
    _, first = train(comm, flags + ["--max-steps", "14"])
    trainer, second = train(comm, flags + ["--max-steps", "26", "--resume"])
    all_ok(comm, first["steps"] == 14 and second["steps"] == 26, f"steps {first['steps']}, {second['steps']}")
    all_ok(comm, first["params_identical"] and second["params_identical"], "parameters differ across ranks")
    decided = [x.step for x in trainer.strategy.bw.decisions]
    all_ok(comm, decided == list(range(14, 26)), f"the resumed protocol decided steps {decided}")
    comm.Barrier()
    if r == 0:
        import shutil

        shutil.rmtree(d)
