"""User errors on the command line: one line on rank 0, exit 2 on every rank, no traceback, no hang; the checks
that run before any work (values, paths, checkpoints); Ctrl-C; the one-rank notes; ``--version``.

Each case launches a real ``mpiexec`` job (a second or two: errors end the job before any training).
"""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.run import ROOT, mpiexec_prefix

PREFIX = "ring-allreduce: error: "


def _env(extra=None, launched=True):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("RA_RANK_LOG_DIR", None)
    if not launched:  # as if typed without mpiexec, even when this test itself runs under one
        env = {k: v for k, v in env.items() if not k.startswith(("PMI_", "PMIX_", "OMPI_", "HYDRA_", "MPIR_",
                                                                   "SLURM_"))}
    env.update(extra or {})
    return env


def ra(n, args, cwd=None, env=None, timeout=120):
    cmd = (mpiexec_prefix(n) if n else []) + [sys.executable, "-m", "ring_allreduce"] + args
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd or ROOT,
                          env=env or _env(launched=bool(n)))


def assert_one_line_error(res, *needles):
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    assert "Traceback" not in out, out
    errors = [ln for ln in out.splitlines() if ln.startswith(PREFIX)]
    assert len(errors) == 1, out  # rank 0 only
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize("args,needle", [
    (["--algorithm", "nosuch"], "valid: "),
    (["--kernel", "nosuch"], "valid: "),
    (["--hidden", "abc"], "--hidden"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--lr", "0"], "--lr"),
    (["--momentum", "nan"], "--momentum"),
    (["--weight-decay", "-5"], "--weight-decay"),
    (["--warmup-epochs", "-3"], "--warmup-epochs"),
    (["--max-steps", "-1"], "--max-steps"),
    (["--checkpoint-every", "-1"], "--checkpoint-every"),
    (["--bucket-mb", "-1"], "--bucket-mb"),
    (["--dataset", "synthetic", "--samples", "0"], "--samples"),
    (["--epochs", "0"], "--epochs"),
    (["--heartbeat-timeout", "nan"], "--heartbeat-timeout"),
    (["--checkpoint-every", "2"], "needs --checkpoint-dir"),
    (["--mode", "ps", "--servers", "3"], "needs at least one worker"),
    (["--local-steps", "2", "--compression", "topk"], "cannot be combined"),
])
def test_train_value_errors_are_one_line_at_three_ranks(args, needle):
    res = ra(3, ["train"] + args)
    assert_one_line_error(res, needle)
    assert "usage:" not in res.stdout + res.stderr  # not an argparse error: no synopsis


def test_bad_choice_prints_the_usage_once():
    res = ra(3, ["train", "--dataset", "nosuch"])
    assert_one_line_error(res, "--dataset", "nosuch")
    assert (res.stdout + res.stderr).count("usage: ring-allreduce train") == 1


@pytest.mark.parametrize("args,needle", [
    (["--algorithms", "rnig"], "rnig"),
    (["-b", "64M", "-e", "4M"], "maxbytes"),
    (["-b", "4Q"], "4Q"),
    (["-n", "0"], "--iters"),
    (["-w", "-1"], "--warmup"),
    (["-f", "1"], "--stepfactor"),
    (["-f", "nan"], "--stepfactor"),
    (["--repeats", "0"], "--repeats"),
    (["--kernel", "nosuch"], "nosuch"),
    (["--plot", "out.bmp"], "bmp"),
    (["-d", "complex"], "complex"),
])
def test_bench_errors_are_one_line(args, needle):
    assert_one_line_error(ra(3, ["bench"] + args), needle)


def test_info_bad_flag_is_one_line():
    assert_one_line_error(ra(2, ["info", "--nosuch"]), "--nosuch")


@pytest.mark.parametrize("args", [["train", "--help"], ["bench", "--help"], ["--help"], ["--version"]])
def test_help_is_printed_once(args):
    res = ra(3, args)
    assert res.returncode == 0, res.stderr
    first = res.stdout.splitlines()[0]
    assert res.stdout.count(first) == 1, res.stdout


def test_tune_to_another_path_says_how_to_use_it(tmp_path):
    res = ra(2, ["bench", "--tune", "t.json", "-b", "8", "-e", "8", "-n", "2", "-w", "0", "--repeats", "1", "-q"],
             cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"export RING_ALLREDUCE_AUTO_TABLE={tmp_path / 't.json'}" in res.stderr and (tmp_path / "t.json").exists()
    assert res.stderr.count("RING_ALLREDUCE_AUTO_TABLE") == 1  # rank 0 only
    res = ra(2, ["bench", "--tune", str(tmp_path / "nodir" / "t.json")])
    assert_one_line_error(res, "cannot write")


def test_version():
    from ring_allreduce import __version__

    res = ra(0, ["--version"])
    assert res.returncode == 0 and res.stdout.strip() == f"ring-allreduce {__version__}"


# -- training: what is checked before work, and stopping inside an epoch ----------------------------------------
def test_max_steps_inside_an_epoch_reports_and_writes_json(tmp_path):
    import json

    out = tmp_path / "r.json"
    res = ra(2, ["train", "--max-steps", "5", "--hidden", "16", "--json", str(out)])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "stopped at step 5 (--max-steps)" in res.stdout and "done: test accuracy" in res.stdout
    r = json.loads(out.read_text())
    assert r["steps"] == 5 and r["history"] == [] and 0 < r["test_accuracy"] <= 1


def test_synthetic_default_lr_converges(tmp_path):
    import json

    out = tmp_path / "r.json"
    res = ra(2, ["train", "--dataset", "synthetic", "--model", "mlp", "--epochs", "3", "--json", str(out)])
    assert res.returncode == 0, res.stdout + res.stderr
    h = json.loads(out.read_text())["history"]
    assert h[0]["loss"] > h[1]["loss"] > h[2]["loss"], h  # at the old default (0.05) it rose 2.53 -> 3.97
    assert h[2]["test_loss"] < h[0]["test_loss"] and h[2]["test_accuracy"] > 0.6, h


def test_checkpoint_dir_that_is_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    t0 = time.time()
    assert_one_line_error(ra(2, ["train", "--checkpoint-dir", "afile"], cwd=tmp_path), "not a directory")
    assert time.time() - t0 < 30  # before the first epoch, not after it


@pytest.mark.parametrize("exists", [True, False])
def test_resume_without_a_checkpoint(tmp_path, exists):
    if exists:
        (tmp_path / "ck").mkdir()
    assert_one_line_error(ra(2, ["train", "--checkpoint-dir", "ck", "--resume"], cwd=tmp_path), "no checkpoint")


def _checkpoint(tmp_path, epochs=1):
    res = ra(2, ["train", "--epochs", str(epochs), "--hidden", "16", "--quiet", "--checkpoint-dir", "ck"],
             cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    return tmp_path / "ck" / "checkpoint.npz"


@pytest.mark.parametrize("damage", ["random", "truncated", "pickle"])
def test_damaged_checkpoint_is_one_clear_line(tmp_path, damage):
    path = _checkpoint(tmp_path)
    data = path.read_bytes()
    if damage == "random":
        path.write_bytes(np.random.default_rng(0).bytes(len(data)))
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # an .npz whose metadata entry is a pickled object array
        np.savez(path, __meta__=np.array([{"epoch": 0}], dtype=object), allow_pickle=True)
    line = assert_one_line_error(ra(2, ["train", "--hidden", "16", "--checkpoint-dir", "ck", "--resume"],
                                    cwd=tmp_path), "checkpoint", "unreadable")
    assert "allow_pickle" not in line


def test_resuming_a_finished_run_and_cleaning_temporaries(tmp_path):
    _checkpoint(tmp_path)
    leftover = tmp_path / "ck" / ".tmp-abc123"
    leftover.write_bytes(b"half a checkpoint")  # what a kill during a write leaves
    res = ra(2, ["train", "--epochs", "1", "--hidden", "16", "--checkpoint-dir", "ck", "--resume"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "nothing to train" in res.stdout and "0 samples/s" not in res.stdout, res.stdout
    assert not leftover.exists()


# -- one rank, without mpiexec --------------------------------------------------------------------------------
def test_train_without_mpiexec_says_one_rank():
    res = ra(0, ["train", "--epochs", "1", "--hidden", "16", "--quiet"])
    assert res.returncode == 0, res.stderr
    assert "running on 1 rank" in res.stderr and res.stderr.count("\n") == 1, res.stderr


def test_bench_at_one_rank_shows_no_bandwidth():
    res = ra(0, ["bench", "-b", "8", "-e", "64", "-f", "8", "-n", "2", "-w", "0", "-q", "--algorithms", "ring,mpi"])
    assert res.returncode == 0, res.stderr
    assert "p=1" in res.stderr and "no algbw/busbw" in res.stderr
    rows = [ln.split() for ln in res.stdout.splitlines() if ln.strip() and not ln.startswith("#")]
    assert len(rows) == 4 and all(r[6:8] == ["-", "-"] for r in rows), res.stdout
    assert "Avg bus bandwidth" not in res.stdout


# -- Ctrl-C and internal errors -------------------------------------------------------------------------------
def test_ctrl_c_prints_a_short_message(tmp_path):
    cmd = mpiexec_prefix(2) + [sys.executable, "-m", "ring_allreduce", "train", "--epochs", "1000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
                            start_new_session=True)
    try:
        header = proc.stdout.readline()  # printed once the model is built: training is under way
        time.sleep(1)
        os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C sends to mpiexec, which forwards it to every rank
        out, _ = proc.communicate(timeout=30)
        assert header.startswith("ring-allreduce train:"), header + out
        out = "\n".join(ln for ln in out.splitlines() if not ln.startswith("epoch "))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    # rank 0 prints it unless it was blocked inside an MPI call: then mpiexec's own two lines are the message
    assert "ring-allreduce: interrupted" in out or "Sending Ctrl-C" in out, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert len(out.strip().splitlines()) <= 5, out
    assert proc.returncode != 0


def test_internal_error_at_one_rank_prints_the_traceback_once(tmp_path):
    script = tmp_path / "boom.py"
    script.write_text("import ring_allreduce\nring_allreduce.abort.install()\n"
                      "from mpi4py import MPI\nraise RuntimeError('injected')\n")
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                         env=_env(launched=False))
    assert res.returncode == 1
    assert res.stderr.count("Traceback") == 1 and res.stderr.count("RuntimeError: injected") == 1, res.stderr


def test_internal_error_in_the_cli_keeps_its_traceback_once():
    res = ra(0, ["train", "--epochs", "1", "--quiet"], env=_env({"RING_ALLREDUCE_FAULT": "not-a-spec"},
                                                                 launched=False))
    assert res.returncode == 1, res.stderr
    assert res.stderr.count("Traceback") == 1 and PREFIX not in res.stderr, res.stderr


# -- heartbeats cover start-up --------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_rank_stopped_during_start_up_is_named(tmp_path):
    cmd = mpiexec_prefix(3) + [sys.executable, "-m", "ring_allreduce", "train", "--quiet",
                               "--heartbeat-interval", "0.2", "--heartbeat-timeout", "1.5"]
    # rank 1 stops itself (SIGSTOP) as start-up begins: before data loading, model build and parameter broadcast
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_env({"RING_ALLREDUCE_FAULT_START": "1"}), start_new_session=True)
    t0 = time.time()
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the job hung:\n{out}")
    assert proc.returncode != 0, out
    assert "rank(s) [1] failed" in out, out
    assert time.time() - t0 < 30
