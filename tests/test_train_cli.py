"""``ring-allreduce train`` end to end under mpiexec (subprocesses): accuracy with the defaults, kill and resume."""
import json
import os
import subprocess
import sys
import time

from tests.run import mpiexec_prefix

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(n, args, env_extra=None, timeout=120):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("RA_RANK_LOG_DIR", None)
    env.update(env_extra or {})
    cmd = mpiexec_prefix(n) + [sys.executable, "-m", "ring_allreduce", "train"] + args
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return proc, time.time() - t0


def test_defaults_reach_97_percent_on_digits_within_a_minute(tmp_path):
    out = str(tmp_path / "run.json")
    proc, wall = _train(2, ["--json", out])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = json.load(open(out))
    assert r["p"] == 2 and r["params_identical"] and len(set(r["param_digests"])) == 1
    assert r["test_accuracy"] >= 0.97, r["history"][-1]
    assert wall < 60, f"took {wall:.1f} s"
    assert len(r["history"]) == r["config"]["epochs"] and r["samples_per_s"] > 0
    assert 0 <= r["comm_fraction"] <= 1 and len(r["bytes_sent"]) == 2 and min(r["bytes_sent"]) > 0
    assert "epoch  20/20" in proc.stdout and "samples/s" in proc.stdout


def test_kill_mid_epoch_then_resume_gives_bitwise_identical_parameters(tmp_path):
    common = ["--epochs", "2", "--hidden", "32", "--batch-size", "64", "--quiet", "--overlap", "thread"]
    a, c = str(tmp_path / "a.json"), str(tmp_path / "c.json")
    proc, _ = _train(2, common + ["--json", a])
    assert proc.returncode == 0, proc.stderr
    ck = str(tmp_path / "ck")
    # 23 steps per epoch; checkpoints at steps 10, 20, 23 (epoch end), 30; rank 1 dies at the start of step 33
    args = common + ["--checkpoint-dir", ck, "--checkpoint-every", "10"]
    proc, _ = _train(2, args, {"RING_ALLREDUCE_FAULT": "1:33"})
    assert proc.returncode != 0
    meta = json.load(open(os.path.join(ck, "checkpoint.json")))
    assert (meta["global_step"], meta["epoch"], meta["step_in_epoch"]) == (30, 1, 7)  # mid-epoch
    proc, _ = _train(2, args + ["--resume", "--json", c])
    assert proc.returncode == 0, proc.stderr
    ra, rc = json.load(open(a)), json.load(open(c))
    assert rc["param_digests"] == ra["param_digests"]
    assert [h["loss"] for h in rc["history"]] == [h["loss"] for h in ra["history"]]
    assert rc["steps"] == ra["steps"]
