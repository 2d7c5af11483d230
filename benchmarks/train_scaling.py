#!/usr/bin/env python3
"""Training throughput vs rank count, and what bucketing/overlap buys: ``ring-allreduce train`` on a synthetic MLP.

Every run is a separate ``mpiexec -n P python -m ring_allreduce train --dataset synthetic ...`` with one BLAS /
Numba / OpenMP thread per rank (p = 1 included), so the figures measure the distribution and not thread contention.
The global batch is fixed (strong scaling): p ranks each compute 1/p of it. A run's throughput is the median of
its per-epoch samples/s after the first epoch (which includes data generation and JIT); each configuration is
repeated, round-robin over the configurations so that load drifts hit them alike. On a shared machine the runs
are bimodal (undisturbed, or sharing the cores with someone else's job), so the table gives the best run (the
undisturbed figure, as "best of N" elsewhere in this project) and the median; every run is in the JSON with the
1-minute load average at its end. Efficiency at p is ``samples/s(p) / (p * samples/s(1))``, best against best.

Usage: python benchmarks/train_scaling.py [--ranks 1,2,4] [--repeats 3] [--quick] [--out PATH]
(default output: benchmarks/results/train_scaling.json)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from ring_allreduce._io import write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

THREAD_ENV = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
                               "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")}


def model_args(quick: bool) -> list:
    """A synthetic classification MLP whose step is compute-bound on one core (2.1 M params, 8.4 MB fp32)."""
    if quick:
        return ["--features", "256", "--hidden", "256,256", "--samples", "2048", "--batch-size", "128",
                "--algorithm", "ring"]
    # the hand-written ring everywhere, so that the overlap rows differ in overlap only
    return ["--features", "1024", "--hidden", "1024,1024", "--samples", "4096", "--batch-size", "512",
            "--algorithm", "ring"]


ABLATION = [("no bucketing, no overlap (one allreduce after backward)", ["--overlap", "none", "--bucket-mb", "0"]),
            ("buckets, no overlap", ["--overlap", "none"]),
            ("buckets + communication thread", ["--overlap", "thread"]),
            ("buckets + nonblocking ring", ["--overlap", "nonblocking"])]


def configs(ranks, quick):
    """(group, label, p, extra flags) rows: scaling with the defaults, then the overlap ablation at p = 2, also
    with a 4x smaller batch where communication weighs 4x more. Efficiency compares with p = 1 of the group."""
    rows = [("default batch", f"p={p}", p, []) for p in ranks]
    if 2 in ranks:
        rows += [("default batch", f"p=2 {label}", 2, extra) for label, extra in ABLATION]
        small = ["--batch-size", "32" if quick else "128"]
        rows += [("small batch", f"batch {small[1]}: p=1", 1, small)]
        rows += [("small batch", f"batch {small[1]}: p=2 {label}", 2, small + extra) for label, extra in ABLATION]
    return rows


def train_cmd(p: int, flags: list, epochs: int, out: str) -> list:
    """``mpiexec -n p python -m ring_allreduce train --dataset synthetic ...`` writing its JSON to ``out``."""
    from tests.run import mpiexec_prefix

    return mpiexec_prefix(p) + [sys.executable, "-m", "ring_allreduce", "train", "--dataset", "synthetic",
                                "--epochs", str(epochs), "--threads", "1", "--quiet", "--json", out] + flags


def run_many(jobs, epochs: int, timeout: int = 300) -> list:
    """Run ``[(p, flags), ...]`` at the same time (one job: alone); return each one's figures."""
    outs, procs = [], []
    env = dict(os.environ, **THREAD_ENV)
    try:
        for p, flags in jobs:
            fd, out = tempfile.mkstemp(suffix=".json")
            os.close(fd)
            outs.append(out)
            cmd = train_cmd(p, flags, epochs, out)
            procs.append((cmd, subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT, text=True)))
        results = []
        for (cmd, proc), out in zip(procs, outs):
            text, _ = proc.communicate(timeout=timeout)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{text}")
            with open(out) as fh:
                results.append(figures(json.load(fh)))
        return results
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.kill()
        for out in outs:
            os.unlink(out)


def run_once(p: int, flags: list, epochs: int, timeout: int = 300) -> dict:
    return run_many([(p, flags)], epochs, timeout)[0]


def figures(r: dict) -> dict:
    """A run's throughput (median samples/s of the epochs after the first) and communication shares."""
    later = r["history"][1:] or r["history"]
    return {"samples_per_s": statistics.median(h["samples_per_s"] for h in later),
            "comm_fraction": statistics.median(h["comm_fraction"] for h in later),
            "comm_busy_fraction": r["comm_busy_fraction"], "bytes_sent_per_rank": r["bytes_sent"],
            "steps": r["steps"], "params_identical": r["params_identical"]}


def measure(ranks, repeats, quick, epochs) -> list:
    """Run every configuration ``repeats`` times, round-robin, so that a change in machine load hits them all."""
    cfgs = configs(ranks, quick)
    runs = {label: [] for _, label, _, _ in cfgs}
    for rep in range(repeats):
        for _, label, p, extra in cfgs:
            r = run_once(p, model_args(quick) + extra, epochs)
            r["load"] = os.getloadavg()[0]
            runs[label].append(r)
            print(f"  [{rep + 1}/{repeats}] {label}: {r['samples_per_s']:,.0f} samples/s (load {r['load']:.2f})",
                  flush=True)
    rows = []
    for group, label, p, extra in cfgs:
        rs = sorted(runs[label], key=lambda r: r["samples_per_s"])
        med = rs[len(rs) // 2]
        best = rs[-1]
        rows.append({"group": group, "label": label, "p": p, "flags": model_args(quick) + extra,
                     "samples_per_s": best["samples_per_s"],
                     "samples_per_s_median": med["samples_per_s"],
                     "samples_per_s_runs": [r["samples_per_s"] for r in runs[label]],
                     "load_per_run": [r["load"] for r in runs[label]],
                     "comm_fraction": best["comm_fraction"], "comm_busy_fraction": best["comm_busy_fraction"],
                     "bytes_sent_per_rank": best["bytes_sent_per_rank"], "params_identical": best["params_identical"]})
    for r in rows:
        base = next((b for b in rows if b["p"] == 1 and b["group"] == r["group"]), None)
        r["efficiency"] = r["samples_per_s"] / (r["p"] * base["samples_per_s"]) if base else None
        r["efficiency_median"] = (r["samples_per_s_median"] / (r["p"] * base["samples_per_s_median"])
                                  if base else None)
    return rows


def table(rows) -> str:
    lines = ["| configuration | samples/s (best) | efficiency (best) | samples/s (median) | efficiency (median) "
             "| exposed comm share | comm busy share |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        eff = f"{100 * r['efficiency']:.0f}%" if r["efficiency"] is not None else "-"
        effm = f"{100 * r['efficiency_median']:.0f}%" if r["efficiency_median"] is not None else "-"
        lines.append(f"| {r['label']} | {r['samples_per_s']:,.0f} | {eff} | {r['samples_per_s_median']:,.0f} | {effm} "
                     f"| {100 * r['comm_fraction']:.1f}% | {100 * (r['comm_busy_fraction'] or 0):.1f}% |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", default="1,2,4")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="a small model (smoke test, not for quoting)")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "train_scaling.json"))
    args = ap.parse_args()
    ranks = [int(v) for v in args.ranks.split(",")]
    load = os.getloadavg()[0]
    print(f"train scaling: ranks {ranks}, {args.repeats} repeats, 1-min load {load:.2f} "
          f"({os.cpu_count()} cores; p above that is oversubscribed)", flush=True)
    t0 = time.time()
    rows = measure(ranks, args.repeats, args.quick, args.epochs)
    from mpi4py import MPI  # noqa: F401  (version only; not initialised for a single process here)
    import mpi4py

    doc = {"benchmark": "train_scaling", "rows": rows, "model_flags": model_args(args.quick),
           "thread_env": THREAD_ENV, "repeats": args.repeats, "epochs": args.epochs,
           "load_before": load, "load_after": os.getloadavg()[0], "seconds": time.time() - t0,
           "cpu_count": os.cpu_count(), "python": platform.python_version(), "mpi4py": mpi4py.__version__,
           "mpi": MPI.Get_library_version().splitlines()[0], "mpiexec": shutil.which("mpiexec"),
           "thread_level": "multiple (mpi4py default)",
           "command": "python benchmarks/train_scaling.py " + " ".join(sys.argv[1:])}
    write_json(args.out, doc)
    print(table(rows))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
