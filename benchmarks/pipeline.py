#!/usr/bin/env python3
"""Pipeline bubble: the measured idle fraction of each stage next to GPipe's ``(S - 1) / (M + S - 1)``.

Runs the real trainer (``ring-allreduce train --pipeline-stages S --micro-batches M``) on a synthetic task with a
wide MLP (so a micro-batch's arithmetic is not lost in message latency) for each ``S`` in ``--stages`` and ``M``
in ``--micro``, and reports the mean over stages of the measured bubble (per stage: 1 - busy / wall of its
schedule, steps after the first) beside the formula, plus samples per second.

Usage (from the repository root; not under mpiexec - it launches the jobs itself)::

    OMP_NUM_THREADS=1 python benchmarks/pipeline.py --json benchmarks/results/pipeline.json

``--quick`` runs S = 2 with M = 1, 4 for a few steps (a smoke test, not figures to quote).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks._jobs import run_train  # noqa: E402
from ring_allreduce._io import write_json  # noqa: E402


def run_one(args, stages: int, micro: int) -> dict:
    """One training job with ``stages`` stages (one replica) and ``micro`` micro-batches; its result JSON."""
    hidden = ",".join([str(args.width)] * max(stages, args.layers - 1))
    return run_train(stages, ["--dataset", "synthetic", "--samples", args.batch_size * (args.steps + 1),
                              "--features", args.width, "--hidden", hidden, "--kernel", "numpy", "--batch-size",
                              args.batch_size, "--max-steps", args.steps, "--pipeline-stages", stages,
                              "--micro-batches", micro, "--pipeline-schedule", args.schedule])


def measure(args) -> list:
    """Rows: S, M, measured bubble (mean over stages), the formula, per-stage bubbles, samples/s."""
    rows = []
    for s in args.stages:
        for m in args.micro:
            rep = run_one(args, s, m)
            pipe = rep["pipeline"]
            rows.append({"stages": s, "micro_batches": m, "bubble_measured": pipe["bubble_fraction"],
                         "bubble_formula": pipe["bubble_formula"],
                         "per_stage": [x["bubble_fraction"] for x in pipe["per_stage"]],
                         "samples_per_s": rep["samples_per_s"]})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", type=lambda t: [int(x) for x in t.split(",")], default=[2, 4])
    ap.add_argument("--micro", type=lambda t: [int(x) for x in t.split(",")], default=[1, 2, 4, 8, 16])
    ap.add_argument("--schedule", choices=("gpipe", "1f1b"), default="gpipe")
    ap.add_argument("--width", type=int, default=512, help="features and hidden width (default 512)")
    ap.add_argument("--layers", type=int, default=4, help="dense layers, at least S (default 4)")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.stages, args.micro, args.width, args.batch_size, args.steps = [2], [1, 4], 64, 64, 5
    if shutil.which("mpiexec") is None:
        ap.error("no mpiexec on PATH")
    load1 = os.getloadavg()[0]
    rows = measure(args)
    print(f"{args.schedule}, width {args.width}, batch {args.batch_size}, {args.steps} steps (load at start "
          f"{load1:.2f})\n")
    print("| S | M | measured bubble | (S-1)/(M+S-1) | per stage | samples/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        per = ", ".join(f"{100 * b:.0f}%" for b in r["per_stage"])
        print(f"| {r['stages']} | {r['micro_batches']} | {100 * r['bubble_measured']:.1f}% | "
              f"{100 * r['bubble_formula']:.1f}% | {per} | {r['samples_per_s']:,.0f} |")
    if args.json:
        write_json(args.json, {"benchmark": "pipeline", "argv": sys.argv, "settings": vars(args), "rows": rows,
                               "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                           "load1_at_start": load1}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
