"""A dead, stopped or stuck rank ends the job with an error naming it (real ``mpiexec`` runs, a few seconds each).

These launch their own ``mpiexec -n 3`` (so they belong to the unit tier, not under pytest-mpi); each job uses a
0.2 s heartbeat and a 1.5 s timeout and must end within 30 s.
"""
import shutil
import sys
import textwrap

import pytest

from tests.mpi_util import launch_job

LIMIT_S = 30

SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    from mpi4py import MPI
    from ring_allreduce.resilience.heartbeat import Heartbeat
    comm = MPI.COMM_WORLD
    mode, victim = sys.argv[1], int(sys.argv[2])
    hb = Heartbeat(comm, interval=0.2, timeout=1.5, stall_timeout=0.5, stall_shutdown=2.0).start()
    for step in range(40):
        hb.progress(step, "compute")
        time.sleep(0.005)
        if step == 10 and comm.Get_rank() == victim:
            if mode == "pyexit":
                sys.exit(0)  # an early but orderly exit: atexit handlers and MPI_Finalize run, no error
            if mode == "exit":
                os._exit(0)  # leaves without MPI_Finalize and without a word
            if mode == "stop":
                os.kill(os.getpid(), signal.SIGSTOP)  # the whole process hangs, heartbeat thread included
            if mode == "stuck":
                time.sleep(1000)  # the main thread hangs; the heartbeat thread still beats
        hb.progress(step, "comm")
        comm.Barrier()
    hb.stop()
    print("rank", comm.Get_rank(), "finished", flush=True)
""")

pytestmark = pytest.mark.skipif(shutil.which("mpiexec") is None, reason="no mpiexec on PATH")


def launch(tmp_path, mode, victim):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    return launch_job(3, [sys.executable, str(script), mode, str(victim)], LIMIT_S + 30)


@pytest.mark.timeout(120)
def test_healthy_job_finishes_without_false_alarms(tmp_path):
    rc, _, out = launch(tmp_path, "none", -1)
    assert rc == 0, out
    assert out.count("finished") == 3 and "failed" not in out, out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("victim", [2, 0])
def test_stopped_rank_is_named_and_the_job_ends(tmp_path, victim):
    rc, elapsed, out = launch(tmp_path, "stop", victim)
    assert rc != 0, out
    assert elapsed < LIMIT_S, f"took {elapsed:.1f} s"
    assert f"rank(s) [{victim}] failed" in out, out


@pytest.mark.timeout(120)
def test_stuck_rank_is_reported_as_a_stall_then_aborted(tmp_path):
    rc, elapsed, out = launch(tmp_path, "stuck", 1)
    assert rc != 0 and elapsed < LIMIT_S, out
    assert "not arrived: rank 1 (compute at step 10" in out, out
    assert "rank(s) [1] failed: stalled" in out, out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("victim", [2, 0])
def test_rank_exiting_early_with_status_zero_is_named(tmp_path, victim):
    rc, elapsed, out = launch(tmp_path, "pyexit", victim)
    assert rc != 0 and elapsed < LIMIT_S, out
    assert f"rank(s) [{victim}] failed: sent no heartbeat" in out, out


@pytest.mark.timeout(120)
def test_rank_vanishing_ends_the_job(tmp_path):
    rc, elapsed, out = launch(tmp_path, "exit", 2)
    # MPICH's launcher kills the job itself when a rank leaves without MPI_Finalize (its exit status is then
    # usually 9, but now and then 0: a race inside hydra); otherwise the heartbeat names the rank. Either way
    # nobody waits forever and the surviving ranks never reach the end.
    assert elapsed < LIMIT_S, out
    assert out.count("finished") < 3, out
