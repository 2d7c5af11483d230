"""A hung pipeline stage is named (stage and layers) and the job ends; bad layouts and combinations give one line.

Real ``mpiexec`` jobs (unit tier, like ``test_ps_failure.py``): heartbeat every 0.2 s, 1.5 s timeout; each job
must end within 30 s.
"""
import shutil
import sys

import pytest

from tests.mpi_util import launch_job
from tests.test_ps_failure import SCRIPT

LIMIT_S = 30
ARGS = ["--pipeline-stages", "2", "--micro-batches", "2", "--epochs", "3", "--hidden", "16,16", "--kernel", "numpy",
        "--compute-floor", "0.01", "--heartbeat-interval", "0.2", "--heartbeat-timeout", "1.5"]

pytestmark = pytest.mark.skipif(shutil.which("mpiexec") is None, reason="no mpiexec on PATH")


def launch(cmd, n):
    return launch_job(n, cmd, LIMIT_S + 30, {"OMP_NUM_THREADS": "1"})


@pytest.mark.timeout(120)
@pytest.mark.parametrize("victim,stage", [(1, 1), (0, 0)])
def test_hung_stage_is_named_and_the_job_ends(tmp_path, victim, stage):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    rc, elapsed, out = launch([sys.executable, str(script), str(victim), "10"] + ARGS, 2)
    assert rc != 0, out
    assert elapsed < LIMIT_S, f"took {elapsed:.1f} s:\n{out}"
    assert f"rank(s) [{victim}] failed" in out and f"rank {victim} is pipeline stage {stage} (layers" in out, out
    assert "finished" not in out, out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n,flags,line", [
    (3, ["--pipeline-stages", "2", "--hidden", "8,8"], "--pipeline-stages 2 needs p divisible by 2"),
    (2, ["--pipeline-stages", "2", "--hidden", ""], "--pipeline-stages 2 exceeds the model's 1 layer(s)"),
    (2, ["--pipeline-stages", "2", "--micro-batches", "0"], "--micro-batches must be >= 1"),
    (2, ["--micro-batches", "2"], "--micro-batches needs --pipeline-stages S >= 2"),
    (2, ["--pipeline-stages", "2", "--backup-workers", "1"], "--pipeline-stages cannot be combined with --backup"),
    (2, ["--balance", "--pipeline-stages", "2"], "--balance cannot be combined with --pipeline-stages"),
    (2, ["--balance", "--local-steps", "2"], "--balance cannot be combined with --local-steps"),
    (2, ["--balance", "--balance-speeds", "1,2,3"], "--balance-speeds '1,2,3': 3 value(s) for 2 rank(s)"),
    (2, ["--balance-every", "3"], "--balance-every needs --balance"),
])
def test_bad_layout_or_combination_is_one_line_and_exit_2(n, flags, line):
    rc, _, out = launch([sys.executable, "-m", "ring_allreduce", "train", "--max-steps", "1"] + flags, n)
    assert rc == 2, out
    assert out.count(line) == 1 and "Traceback" not in out, out


@pytest.mark.timeout(120)
def test_dead_stage_ends_the_job():
    """A stage that exits without a word (os._exit at step 10): nobody waits forever, nobody finishes."""
    rc, elapsed, out = launch_job(2, [sys.executable, "-m", "ring_allreduce", "train"] + ARGS, LIMIT_S + 30,
                                  {"OMP_NUM_THREADS": "1", "RING_ALLREDUCE_FAULT": "1:10"})
    assert rc != 0 and elapsed < LIMIT_S, out
    assert "done:" not in out, out
