"""Every command in the README's ``bash`` blocks runs as written and gives what the README says.

Commands are taken from the README itself (so an edited command is what gets checked); each is run under a real
``mpiexec`` in a temporary folder, shortened where the README's arguments would take minutes (fewer epochs,
a smaller size range: flags appended last win in argparse), and its output checked against the README's claim.
Commands that install software, need Slurm or run for minutes are skipped by prefix, with the reason; the test
fails when a command matches neither a check nor a skip, so a new README command has to be added here.
Also runs as a script: ``python tests/test_readme.py`` (the same checks through pytest).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.run import ROOT, mpiexec_prefix

README = os.path.join(ROOT, "README.md")
MAX_RANKS = 4
#: command prefixes not run here, and why
SKIP = {
    "pip install": "installs packages (the fresh-clone CI does that)",
    "env MPICC": "builds mpi4py against a site MPI",
    "module load": "needs a site module system",
    "python tests/run.py": "the whole test suite (this test is part of it)",
    "bash benchmarks/run_readme.sh": "measures for many minutes, waiting for a quiet node",
    "sbatch": "needs a Slurm cluster (the slurm tier submits these scripts)",
    "RA_VENV=": "needs a Slurm cluster",
    "RA_EPOCHS=": "needs a Slurm cluster",
    "python slurm/local.py": "needs slurm-wlm and root (the slurm tier runs the same cluster)",
    "sudo ": "needs root: brings up emulated hosts (the cluster tier runs the same commands' code paths)",
    "python benchmarks/ps_compare.py --json": "brings up the emulated cluster and measures for many minutes",
    "python benchmarks/ps_compare.py --straggle-spec": "brings up the emulated cluster and measures for many minutes",
    "python benchmarks/ps_compare.py --layouts": "brings up the emulated cluster and measures for many minutes",
    "python benchmarks/ps_compare.py --launcher mpiexec --quick": "a 2-minute smoke run of every mode (the modes are tested by tests/test_ps_*)",
}
#: (pattern on the command as written, arguments appended to shorten it)
SHORTEN = [
    (r"python benchmarks/(balance|pipeline)\.py", ["--quick"]),
    (r"python benchmarks/torch_ddp\.py", []),  # already a smoke run (--quick)
    (r"python benchmarks/train_ceiling\.py", []),  # already a smoke run (--quick)
    (r"python examples/torch_digits\.py", ["--epochs", "4"]),
    (r"train .*--checkpoint-dir", ["--epochs", "2"]),
    (r"train .*--straggle", ["--epochs", "1"]),
    (r"train .*--compression", ["--epochs", "1"]),
    (r"train .*--epochs", []),  # already short (README: the synthetic MLP, 3 epochs)
    (r"train\b", []),  # the quick start: 20 epochs of digits, a few seconds
    (r"bench .*--tune", ["-b", "8", "-e", "64K", "-f", "64", "-n", "2", "-w", "0", "--repeats", "1"]),
    (r"bench .*--latency", ["-e", "64", "-n", "20", "-w", "2", "--repeats", "2"]),
    (r"bench\b", ["-e", "4M", "-n", "2", "-w", "1"]),
    (r"info\b", []),
]


def bash_commands(text: str) -> list:
    """Every command line of the README's ```bash blocks (``a && b`` split, comments dropped)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        block = re.sub(r"\\\n\s*", " ", block)  # a line ending in a backslash goes on on the next
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line:
                out += [part.strip() for part in line.split("&&")]
    return out


def python_blocks(text: str) -> list:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def skip_reason(cmd: str):
    for prefix, why in SKIP.items():
        if cmd.startswith(prefix):
            return why
    return None


def to_argv(cmd: str):
    """``[env], argv, extra``: launcher flags for this machine, ``ring-allreduce`` as this Python's module."""
    words = shlex.split(cmd)
    env = {}
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        k, v = words.pop(0).split("=", 1)
        env[k] = v
    argv = []
    if words[0] == "mpiexec":
        n = int(words[2])
        assert words[1] == "-n", cmd
        argv += mpiexec_prefix(min(n, MAX_RANKS))
        words = words[3:]
    if words[0] == "ring-allreduce":
        argv += [sys.executable, "-m", "ring_allreduce"] + words[1:]
    elif words[0] == "python":
        argv += [sys.executable] + [os.path.join(ROOT, w) if w.endswith(".py") else w for w in words[1:]]
    else:
        raise AssertionError(f"README command neither skipped nor runnable here: {cmd}")
    extra = None
    for pattern, more in SHORTEN:
        if re.search(pattern, cmd):
            extra = more
            break
    return env, argv, extra


def _run(argv, cwd, env_extra=None, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("RA_RANK_LOG_DIR", None)
    env.update(env_extra or {})
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _commands():
    with open(README) as fh:
        text = fh.read()
    return [c for c in bash_commands(text) if skip_reason(c) is None]


def test_readme_commands_are_all_known():
    with open(README) as fh:
        cmds = bash_commands(fh.read())
    assert len(cmds) >= 15, cmds  # the README lost its examples, or the extraction broke
    for c in cmds:
        if skip_reason(c) is None:
            _, _, extra = to_argv(c)
            assert extra is not None, f"no check for README command: {c}"


def _needs_torch(text: str):
    """The skip reason for a command or example that needs PyTorch where it is not installed, else None."""
    if not re.search(r"\bimport torch|ring_allreduce\.torch|torch_digits|torch_ddp", text):
        return None
    try:
        import torch  # noqa: F401
    except ImportError:
        return "needs PyTorch (pip install 'ring-allreduce[torch]')"
    return None


def _check_claims(cmd: str, res, cwd) -> None:
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"{cmd}\n{out[-3000:]}"
    assert "Traceback" not in out, out[-3000:]
    words = shlex.split(cmd)
    if "train" in words:
        assert "done: " in res.stdout and "params identical on all ranks: True" in res.stdout, out[-2000:]
        if "--json" in words:
            r = json.load(open(os.path.join(cwd, words[words.index("--json") + 1])))
            losses = [(h["loss"], h["test_loss"]) for h in r["history"]]
            if len(losses) > 1:  # converges: training and test loss both go down
                assert losses[-1][0] < losses[0][0] and losses[-1][1] < losses[0][1], f"{cmd}: {losses}"
            if r["test_accuracy"] is not None:
                assert r["test_accuracy"] > 0.5, r["history"]
        if "--compression" in words:
            assert "KiB/step" in res.stdout and "less than the plain ring" in res.stdout, res.stdout
        if "--backup-workers" in words:
            assert "contributors" in res.stdout and "dropped" in res.stdout, res.stdout
        if "--timeline" in words:
            trace = json.load(open(os.path.join(cwd, words[words.index("--timeline") + 1])))
            assert trace, "empty timeline"
    if "bench" in words:
        assert "# Out of bounds values: 0" in res.stdout, out[-2000:]
        if "-c" in words:
            assert "# Out of bounds values: 0 OK" in res.stdout, res.stdout[-2000:]
        if "--json" in words:
            doc = json.load(open(os.path.join(cwd, words[words.index("--json") + 1])))
            assert doc["rows"] and all(r["wrong"] in (0, None) for r in doc["rows"])
        if "--plot" in words:
            with open(os.path.join(cwd, words[words.index("--plot") + 1]), "rb") as fh:
                assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
        if "--tune" in words:
            assert "# wrote" in res.stdout, res.stdout[-2000:]
    if any(w.endswith("examples/torch_digits.py") for w in words):
        acc = re.search(r"test accuracy ([0-9.]+)", res.stdout)
        assert acc and float(acc.group(1)) > 0.5, res.stdout[-2000:]
    if any(w.endswith("benchmarks/torch_ddp.py") for w in words):
        assert "samples/s" in res.stdout and "ring_allreduce" in res.stdout, res.stdout[-2000:]
    if "info" in words:
        assert "mpi_library" in res.stdout and "auto_table" in res.stdout, res.stdout


@pytest.mark.timeout(600)
@pytest.mark.parametrize("cmd", _commands())
def test_readme_command(cmd, tmp_path):
    if _needs_torch(cmd):
        pytest.skip(_needs_torch(cmd))
    env, argv, extra = to_argv(cmd)
    if "--tune" in cmd:  # --tune without a path writes the active table: a scratch copy of the shipped one
        import shutil

        shutil.copy(os.path.join(ROOT, "ring_allreduce", "data", "auto_table.json"), tmp_path / "auto_table.json")
        env.setdefault("RING_ALLREDUCE_AUTO_TABLE", str(tmp_path / "auto_table.json"))
    res = _run(argv + (extra or []), str(tmp_path), env)
    _check_claims(cmd, res, str(tmp_path))
    if "--tune" in cmd:
        table = json.load(open(tmp_path / "auto_table.json"))
        assert table["rules"], table
        info = _run(mpiexec_prefix(1) + [sys.executable, "-m", "ring_allreduce", "info"], str(tmp_path), env)
        assert str(tmp_path / "auto_table.json") in info.stdout, info.stdout  # info names the table in use
    if "--checkpoint-dir" in cmd:  # "kill it, then add --resume": continue for one more epoch
        res = _run(argv + ["--epochs", "3", "--resume"], str(tmp_path), env)
        _check_claims(cmd, res, str(tmp_path))
        assert "resumed from" in res.stdout and "epoch   3/3" in res.stdout, res.stdout


@pytest.mark.timeout(300)
@pytest.mark.parametrize("index", range(len(python_blocks(open(README).read()))))
def test_readme_python_block(index, tmp_path):
    """The README's Python examples run under ``mpiexec -n 2`` (fragments that name undefined data are skipped)."""
    code = python_blocks(open(README).read())[index]
    if "local_gradient" in code:
        pytest.skip("a fragment: local_gradient and comm come from the reader's program")
    if _needs_torch(code):
        pytest.skip(_needs_torch(code))
    if "from ring_allreduce import cluster" in code:
        pytest.skip("needs root and brings up emulated hosts: tests/test_cluster.py runs the same API")
    script = tmp_path / "example.py"
    script.write_text(code)
    res = _run(mpiexec_prefix(2) + [sys.executable, str(script)], str(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v", "-p", "no:cacheprovider"]))
