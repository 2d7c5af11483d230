#!/usr/bin/env python3
"""Where a training step's time goes: py-spy samples of every rank of ``ring-allreduce train``, by category.

Starts ``mpiexec -n P python -m ring_allreduce train ...`` (the scaling benchmark's MLP by default), waits
``--warmup`` seconds (data generation, JIT), then attaches ``py-spy record --format raw`` to every rank for
``--duration`` seconds and sorts each sample by the innermost frame that belongs to this package:

* ``compute``: the model's forward and backward (``train/models.py``, ``train/mlp_*``);
* ``communication``: the allreduce (``algorithms/``, ``plan.py``, ``transport``, the bucket exchange and hooks);
* ``update``: the optimizer's SGD step (``train/optimizer.py``);
* ``data``: batches (``train/data.py``);
* ``trainer and other``: the rest (the step loop, timers, Python start-up frames).

Samples whose innermost frame is a ``threading`` wait (the heartbeat thread between beats) are left out: they are
a background thread sleeping, not the step's time.

A sample inside NumPy or MPI counts for the package frame that called it (py-spy without ``--native``
attributes C time to the calling Python line), so ``communication`` includes MPI's copies and its busy polling.

Usage (from the repository root, py-spy installed, permission to ptrace the ranks, e.g. root)::

    python benchmarks/train_profile.py --batch-size 512 --json benchmarks/results/train_profile_b512.json
"""
from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CATEGORIES = ("compute", "communication", "update", "data", "trainer and other")
_RULES = (  # (path fragment of a frame's file, category): the innermost matching frame decides
    ("ring_allreduce/train/models.py", "compute"), ("ring_allreduce/train/mlp_", "compute"),
    ("ring_allreduce/train/optimizer.py", "update"),
    ("ring_allreduce/train/data.py", "data"),
    ("ring_allreduce/algorithms/", "communication"), ("ring_allreduce/plan.py", "communication"),
    ("ring_allreduce/transport", "communication"), ("ring_allreduce/train/buckets.py", "communication"),
    ("ring_allreduce/train/hooks.py", "communication"), ("ring_allreduce/train/transport.py", "communication"),
    ("ring_allreduce/api.py", "communication"), ("ring_allreduce/schedules.py", "communication"),
    ("ring_allreduce/kernels/", "communication"),
)


def categorize(stack: str) -> str:
    """The category of one raw py-spy stack (``frame;frame;...``, outermost first)."""
    for frame in reversed(stack.split(";")):
        for fragment, cat in _RULES:
            if fragment in frame:
                return cat
    return "trainer and other"


#: innermost frames of a thread that waits (the heartbeat's timed wait): py-spy does not always see them as idle
_WAITING = ("Condition.wait (threading.py", "Event.wait (threading.py", "Thread.join (threading.py")


def summarize(raw_text: str, top: int = 5) -> dict:
    """``{category: share of samples}``, the sample count, and the ``top`` innermost frames of each category.
    Samples of a waiting background thread are left out (counted in ``waiting_samples``)."""
    counts, leaves = collections.Counter(), collections.defaultdict(collections.Counter)
    waiting = 0
    for line in raw_text.splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            if stack.split(";")[-1].startswith(_WAITING):
                waiting += int(n)
                continue
            cat = categorize(stack)
            counts[cat] += int(n)
            leaves[cat][stack.split(";")[-1]] += int(n)
    total = sum(counts.values())
    out = {c: (counts[c] / total if total else 0.0) for c in CATEGORIES}
    out["samples"] = total
    out["waiting_samples"] = waiting
    out["top_frames"] = {c: [[f, k / total] for f, k in leaves[c].most_common(top)] for c in CATEGORIES if leaves[c]}
    return out


def train_cmd(args) -> list:
    return [sys.executable, "-m", "ring_allreduce", "train", "--dataset", "synthetic", "--features",
            str(args.features), "--hidden", args.hidden, "--samples", str(args.samples), "--batch-size",
            str(args.batch_size), "--algorithm", args.algorithm, "--epochs", str(args.epochs), "--threads", "1",
            "--quiet"] + args.extra


def _rank_pids(job_pid: int, want: int, deadline: float) -> list:
    """The PIDs of the ``ring_allreduce train`` processes under the launcher ``job_pid``."""
    while time.time() < deadline:
        out = subprocess.run(["pgrep", "-f", "-d", " ", "ring_allreduce train"], capture_output=True, text=True)
        pids = [int(p) for p in out.stdout.split() if int(p) != job_pid]
        pids = [p for p in pids if _descends(p, job_pid)]
        if len(pids) >= want:
            return sorted(pids)[:want]
        time.sleep(0.2)
    raise RuntimeError(f"found fewer than {want} ranks under the launcher")


def _mpi_rank(pid: int, default: int) -> int:
    """The launcher's rank variable in the environment of process ``pid`` (``default`` when unreadable)."""
    from ring_allreduce.cluster.launch import _RANK_VARS
    from ring_allreduce.cluster.net import environ

    env = environ(pid)
    r = next((env[v] for v in _RANK_VARS if v in env), "")
    return int(r) if r.isdigit() else default


def _descends(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            with open(f"/proc/{pid}/stat") as fh:
                pid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


def profile(args) -> dict:
    from tests.run import mpiexec_prefix

    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("train_profile.py: py-spy is not on PATH (pip install py-spy)")
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", PYTHONPATH=ROOT)
    job = subprocess.Popen(mpiexec_prefix(args.ranks) + train_cmd(args), env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    tmp = tempfile.mkdtemp(prefix="ra-prof-")
    try:
        pids = _rank_pids(job.pid, args.ranks, time.time() + 60)
        pids = sorted(pids, key=lambda pid: _mpi_rank(pid, pid))  # index r below is MPI rank r
        time.sleep(args.warmup)
        spies = [subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(args.duration), "--rate",
                                   str(args.rate), "--format", "raw", "--output", os.path.join(tmp, f"{r}.txt")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for r, pid in enumerate(pids)]
        for s in spies:
            s.wait(timeout=args.duration + 60)
        ranks = []
        for r in range(len(pids)):
            with open(os.path.join(tmp, f"{r}.txt")) as fh:
                ranks.append(summarize(fh.read()))
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGTERM)
        job.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
    return {"command": " ".join(train_cmd(args)), "ranks": args.ranks, "batch_size": args.batch_size,
            "duration_s": args.duration, "rate_hz": args.rate, "per_rank": ranks,
            "load_avg": os.getloadavg()[0]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--features", type=int, default=1024)
    ap.add_argument("--hidden", default="1024,1024")
    ap.add_argument("--samples", type=int, default=16384)
    ap.add_argument("--algorithm", default="ring")
    ap.add_argument("--epochs", type=int, default=40, help="enough to outlast warm-up + duration")
    ap.add_argument("--warmup", type=float, default=8.0)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rate", type=int, default=200)
    ap.add_argument("--json", default=None)
    ap.add_argument("extra", nargs="*", help="more train flags, after --")
    args = ap.parse_args(argv)
    res = profile(args)
    print(f"{res['command']}  (p={args.ranks}, {args.duration} s at {args.rate} Hz, load {res['load_avg']:.2f})")
    print("rank  " + "  ".join(f"{c:>17s}" for c in CATEGORIES) + "  samples")
    for r, row in enumerate(res["per_rank"]):
        print(f"{r:4d}  " + "  ".join(f"{100 * row[c]:16.1f}%" for c in CATEGORIES) + f"  {row['samples']}")
    if args.json:
        from ring_allreduce._io import write_json

        write_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
