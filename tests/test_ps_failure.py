"""A dead or hung parameter server or worker ends the job with a message naming it; bad flags give one line.

Real ``mpiexec -n 3`` jobs (unit tier, like ``test_heartbeat_failure.py``): ``--mode ps --servers 2`` (ranks 0, 1
serve, rank 2 works), heartbeat every 0.2 s, 1.5 s timeout; each job must end within 30 s.
"""
import shutil
import sys
import textwrap

import pytest

from tests.mpi_util import launch_job

LIMIT_S = 30
ARGS = ["--mode", "ps", "--servers", "2", "--epochs", "3", "--hidden", "16", "--kernel", "numpy",
        "--compute-floor", "0.01", "--heartbeat-interval", "0.2", "--heartbeat-timeout", "1.5"]

SCRIPT = textwrap.dedent("""
    import os, signal, sys, types
    from mpi4py import MPI
    from ring_allreduce.train import cli, plugins
    victim, at = int(sys.argv[1]), int(sys.argv[2])
    comm = MPI.COMM_WORLD

    class Stop:
        def on_step_begin(self, trainer, step):
            if trainer.rank == victim and step == at:
                os.kill(os.getpid(), signal.SIGSTOP)  # the whole process hangs, heartbeat thread included

    mods = plugins.discover()
    args = cli.parse(sys.argv[3:], mods)
    setup = types.SimpleNamespace(comm=comm, alloc=None, callbacks=[])
    trainer = cli.build(args, comm, setup)
    plugins.call(mods, "after_build", args, trainer)
    trainer.callbacks.append(Stop())
    trainer.fit()
    print("rank", comm.Get_rank(), "finished", flush=True)
""")

pytestmark = pytest.mark.skipif(shutil.which("mpiexec") is None, reason="no mpiexec on PATH")


def launch(cmd, env_extra=None, n=3):
    return launch_job(n, cmd, LIMIT_S + 30, dict(env_extra or {}, OMP_NUM_THREADS="1"))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("victim,role", [(1, "server"), (2, "worker"), (0, "server")])
def test_hung_server_or_worker_is_named_and_the_job_ends(tmp_path, victim, role):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    rc, elapsed, out = launch([sys.executable, str(script), str(victim), "20"] + ARGS)
    assert rc != 0, out
    assert elapsed < LIMIT_S, f"took {elapsed:.1f} s:\n{out}"
    assert f"rank(s) [{victim}] failed" in out, out
    assert "finished" not in out, out


@pytest.mark.timeout(120)
def test_dead_server_ends_the_job(tmp_path):
    """A server that exits without a word (os._exit at step 20): nobody waits forever, nobody finishes."""
    rc, elapsed, out = launch([sys.executable, "-m", "ring_allreduce", "train"] + ARGS,
                              {"RING_ALLREDUCE_FAULT": "1:20"})
    assert rc != 0 and elapsed < LIMIT_S, out
    assert "done:" not in out, out


@pytest.mark.timeout(120)
def test_bad_combination_is_one_line_on_rank_zero_and_exit_2():
    rc, _, out = launch([sys.executable, "-m", "ring_allreduce", "train", "--mode", "ps", "--servers", "2"], n=2)
    assert rc == 2, out
    line = "ring-allreduce: error: --mode ps needs at least one worker"
    assert out.count(line) == 1 and "Traceback" not in out, out
