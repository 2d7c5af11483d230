"""The GPU check script's CPU-checkable parts: bash syntax, the dry run's plan, the benchmark's section list."""
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.sh")
BENCH = os.path.join(ROOT, "benchmarks", "gpu_bench.py")


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_gpu_check_parses_and_its_dry_run_lists_every_step():
    subprocess.run(["bash", "-n", SCRIPT], check=True)
    out = subprocess.run(["bash", SCRIPT, "--dry-run"], check=True, capture_output=True, text=True).stdout
    for needle in ("pip install -q --no-index --no-deps --no-compile --ignore-installed --prefix", "--tiers gpu", "--tiers cudasim",
                   "gpu_bench.py --sections kernels,staging,mlp,codec", "mpiexec -n 2"):
        assert needle in out, out
    budget = sum(int(line.split(", ")[1].split("s)")[0]) for line in out.splitlines() if line.startswith("[dry-run]"))
    assert budget <= 480, f"step limits add up to {budget} s, over the 8-minute budget"


def test_gpu_check_refuses_unknown_arguments():
    r = subprocess.run(["bash", SCRIPT, "--gpu-please"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown argument" in r.stderr


def test_gpu_bench_dry_run_imports_no_gpu_library():
    code = (f"import runpy, sys; m = runpy.run_path({BENCH!r}); rc = m['main'](['--dry-run']); "
            "assert rc == 0 and 'cupy' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert set(plan) == {"kernels", "staging", "allreduce", "mlp", "codec"}
    assert plan["kernels"]["bytes"][0] == 1 << 20 and plan["kernels"]["bytes"][-1] == 1 << 30
