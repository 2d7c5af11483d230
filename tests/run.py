#!/usr/bin/env python3
"""Run every test tier and print one closing line: ``total: N passed, N failed, N skipped``.

Tiers: ``unit`` (no MPI launcher: schedules, registries, kernels), ``mpi`` (``mpiexec -n N`` for N in
``--ranks``, default 1..5, plus the core allreduce and error tests at ``--wide-ranks``, default 6..8), ``cudasim`` (Numba CUDA kernels under ``NUMBA_ENABLE_CUDASIM=1``), ``gpu`` (skipped
with a reason without a GPU), ``slurm`` (skipped with a reason without slurm-wlm), ``cluster`` (jobs across emulated
hosts, ``ring-allreduce cluster``; skipped with a reason without root or iproute2). A tier's verdict comes from
the exit status of pytest (or of mpiexec, which fails if any rank failed), never from rank 0's output alone;
pytest's exit 5 (no tests collected) counts as a failure. Each pytest run has per-test timeouts with
``--timeout-method=thread`` and the whole run a wall-clock limit, so a hang fails instead of blocking.

Usage: python tests/run.py [--tiers unit,mpi,cudasim,gpu,slurm,cluster] [--ranks 1,2,3,4,5] [--wide-ranks 6,7,8] [-k EXPR] [-x]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIERS = ("unit", "mpi", "cudasim", "gpu", "slurm", "cluster")
MPI_ONLY = "mpi and not cudasim and not gpu and not slurm"
CORE_TESTS = ["tests/test_allreduce_mpi.py", "tests/test_errors_mpi.py", "tests/test_fuzz_mpi.py"]
_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)")


def mpiexec_prefix(n: int) -> list:
    """``mpiexec -n N`` plus the flags the installed launcher needs (Open MPI as root / oversubscribed)."""
    exe = shutil.which("mpiexec")
    if exe is None:
        sys.exit("tests/run.py: no mpiexec on PATH; install the [mpich] or [openmpi] extra")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    cmd = [exe, "-n", str(n)]
    if "Open MPI" in out or "OpenRTE" in out or "prte" in out.lower():
        cmd += ["--oversubscribe"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd += ["--allow-run-as-root"]
    return cmd


def summarize(text: str) -> dict:
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    lines = [ln for ln in text.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", ln)
             and (" in " in ln or ln.startswith("="))]
    if lines:
        for num, word in _COUNT.findall(lines[-1]):
            if word in ("passed", "xfailed"):
                counts["passed"] += int(num)
            elif word in ("failed", "error", "errors", "xpassed"):
                counts["failed"] += int(num)
            elif word == "skipped":
                counts["skipped"] += int(num)
    return counts


#: a line of pytest -q progress: result letters, then "[ 42%]"
_PROGRESS = re.compile(r"^([.FEsxX]+)\s*(\[\s*\d+%\])?\s*$")
HEARTBEAT_S = 20.0


def _done_so_far(text: str) -> int:
    return sum(len(m.group(1)) for m in map(_PROGRESS.match, text.splitlines()) if m)


def run(label: str, cmd: list, env: dict, limit: int) -> dict:
    """Run one tier command, echoing its output as it comes, with a line every ~20 s of silence (no hang unseen)."""
    import threading

    print(f"\n=== {label}: {' '.join(cmd)}", flush=True)
    t0 = time.time()
    chunks: list = []
    last = [time.time()]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def pump():
        for raw in iter(lambda: proc.stdout.read1(4096), b""):
            text = raw.decode(errors="replace")
            chunks.append(text)
            sys.stdout.write(text)
            sys.stdout.flush()
            last[0] = time.time()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    rc = None
    while rc is None:
        try:
            rc = proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            now = time.time()
            if now - t0 > limit:
                proc.kill()
                proc.wait()
                chunks.append(f"\n*** {label}: killed after {limit} s (hang)\n")
                print(chunks[-1], flush=True)
                rc = -1
            elif now - last[0] >= HEARTBEAT_S:
                print(f"\n[run.py] {label}: {now - t0:.0f} s, {_done_so_far(''.join(chunks))} test(s) done so far",
                      flush=True)
                last[0] = now
    reader.join(timeout=5)
    out = "".join(chunks)
    counts = summarize(out)
    if rc == 5:
        print(f"*** {label}: pytest collected no tests (exit 5): counted as a failure")
    if rc != 0 and counts["failed"] == 0:
        counts["failed"] = 1  # a rank other than 0 failed, a crash, a hang or no tests: still a failure
    log_dir = env.get("RA_RANK_LOG_DIR")
    if rc != 0 and log_dir and os.path.isdir(log_dir):
        for name in sorted(os.listdir(log_dir)):
            with open(os.path.join(log_dir, name), errors="replace") as fh:
                text = fh.read()
            print(f"--- {label} {name} (last 4000 chars) ---\n{text[-4000:]}")
    print(f"=== {label}: exit {rc} after {time.time() - t0:.1f} s: {counts}", flush=True)
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiers", default=",".join(TIERS))
    ap.add_argument("--ranks", default="1,2,3,4,5")
    ap.add_argument("--wide-ranks", default="6,7,8",
                    help="more rank counts for the core allreduce and error tests only (oversubscribed: MPICH yields)")
    ap.add_argument("-k", default=None, help="pytest -k expression")
    ap.add_argument("-x", action="store_true", help="stop at the first failing tier")
    args = ap.parse_args()
    tiers = [t for t in args.tiers.split(",") if t]
    unknown = set(tiers) - set(TIERS)
    if unknown:
        ap.error(f"unknown tier(s) {sorted(unknown)}; valid: {', '.join(TIERS)}")
    py = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", "--color=no", "--timeout-method=thread"]
    if args.k:
        py += ["-k", args.k]
    rank_py = [sys.executable, "-m", "tests.rank_pytest"] + py[3:]  # same options; ranks > 0 log to files
    base_env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    base_env.setdefault("OMP_NUM_THREADS", "1")
    total = {"passed": 0, "failed": 0, "skipped": 0}
    t0 = time.time()
    for tier in tiers:
        runs = []
        if tier == "unit":
            runs.append(("unit", py + ["--timeout=300", "-m", "not mpi and not cudasim and not gpu and not slurm and not cluster"],
                         {}, 900))
        elif tier == "mpi":
            for n in [int(v) for v in args.ranks.split(",") if v]:
                extra = {}
                if n > (os.cpu_count() or 1) * 2:
                    extra["MPIR_CVAR_ENABLE_HEAVY_YIELD"] = "1"  # MPICH ranks busy-poll: yield when oversubscribed
                runs.append((f"mpi n={n}", mpiexec_prefix(n) + rank_py + ["--timeout=240", "--with-mpi", "-m", MPI_ONLY],
                             extra, 1200))
            for n in [int(v) for v in args.wide_ranks.split(",") if v]:
                runs.append((f"mpi n={n} (core)", mpiexec_prefix(n) + rank_py + [
                    "--timeout=300", "--with-mpi", "-m", MPI_ONLY] + CORE_TESTS,
                    {"MPIR_CVAR_ENABLE_HEAVY_YIELD": "1"}, 1200))
        elif tier == "cudasim":
            sim = {"NUMBA_ENABLE_CUDASIM": "1"}
            runs.append(("cudasim", py + ["--timeout=600", "-m", "cudasim and not mpi"], sim, 1200))
            runs.append(("cudasim n=2", mpiexec_prefix(2) + rank_py + ["--timeout=600", "--with-mpi", "-m", "cudasim and mpi"],
                         sim, 1200))
        elif tier == "gpu":
            runs.append(("gpu", py + ["--timeout=600", "-m", "gpu"], {}, 1200))
            for n in (2, 3):  # device arrays through every algorithm, ranks sharing the one GPU
                runs.append((f"gpu n={n}", mpiexec_prefix(n) + rank_py + ["--timeout=600", "--with-mpi", "-m", "gpu and mpi"],
                             {}, 1200))
        elif tier == "slurm":
            runs.append(("slurm", py + ["--timeout=600", "-m", "slurm and not cluster"], {}, 1200))
        elif tier == "cluster":  # jobs across emulated hosts (root + iproute2; skipped with a reason otherwise)
            runs.append(("cluster", py + ["--timeout=600", "-m", "cluster"], {}, 1200))
        for label, cmd, extra, limit in runs:
            env = dict(base_env, **extra)
            env["RA_RANK_LOG_DIR"] = tempfile.mkdtemp(prefix="ra-ranks-")
            c = run(label, cmd, env, limit)
            for k in total:
                total[k] += c[k]
            shutil.rmtree(env["RA_RANK_LOG_DIR"], ignore_errors=True)
            if args.x and c["failed"]:
                break
    print(f"\n(all tiers: {time.time() - t0:.0f} s)")
    print(f"total: {total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped")
    return 1 if total["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
