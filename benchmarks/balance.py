#!/usr/bin/env python3
"""Load balancing against a persistently slow rank: median step time and final accuracy, equal shards vs
``--balance`` vs the ideal split.

Runs the real trainer (``ring-allreduce train`` on digits) under ``mpiexec -n P`` with the last rank slowed
``FACTOR`` x on every step (``--straggle RANK:FACTOR``) and a compute floor (see ``benchmarks/stragglers.py``: the
digits MLP computes too little for a slowdown to show; under ``--balance`` the floor scales with the rows a rank
computes, so the emulated compute costs time per sample). Configurations, each ``--repeats`` times:

* ``equal shards`` - the plain synchronous trainer: every step waits for the slow rank's full share;
* ``balance`` - ``--balance --balance-every K``: shares follow the measured, smoothed per-sample times;
* ``ideal split`` - ``--balance --balance-speeds``: the shares fixed at the true speeds (1 for the slow rank,
  ``FACTOR`` for the others) from the first step;
* ``no straggler`` - equal shards, nobody slowed (the floor alone).

Reported per configuration: the median step time seen from rank 0 (first step excluded), its ratio to the ideal
split and to equal shards, and the final test accuracy. Step times are medians over the run, so the first
``K`` steps before the first re-split barely move them.

Usage (from the repository root; not under mpiexec - it launches the jobs itself)::

    OMP_NUM_THREADS=1 python benchmarks/balance.py --json benchmarks/results/balance.json

``--quick`` runs one short epoch once (a smoke test, not figures to quote).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks._jobs import run_train  # noqa: E402
from ring_allreduce._io import write_json  # noqa: E402


def configs(args) -> list:
    """(label, extra flags) per configuration; the slow rank is the last one."""
    slow = ["--straggle", f"{args.ranks - 1}:{args.factor:g}"]
    ideal = ",".join([f"{args.factor:g}"] * (args.ranks - 1) + ["1"])
    return [("equal shards", slow),
            ("balance", slow + ["--balance", "--balance-every", str(args.every)]),
            ("ideal split", slow + ["--balance", "--balance-speeds", ideal]),
            ("no straggler", [])]


def run_one(args, extra: list) -> dict:
    """Launch one training job; return its result JSON."""
    return run_train(args.ranks, ["--dataset", "digits", "--kernel", "numpy", "--epochs", args.epochs, "--seed",
                                  args.seed, "--batch-size", args.batch_size, "--compute-floor", args.floor] + extra)


def measure(args) -> dict:
    """Run every configuration ``repeats`` times; return per label the medians and the runs' rows."""
    results = {}
    for label, extra in configs(args):
        rows = []
        for _ in range(args.repeats):
            res = run_one(args, extra)
            row = {"median_step_s": res["step_time"][0]["median_s"], "final_accuracy": res["test_accuracy"]}
            if "balance" in res:
                row["last_split"] = res["balance"]["splits"][-1]["rows"]
            rows.append(row)
        results[label] = {"median_step_s": float(np.median([r["median_step_s"] for r in rows])),
                          "final_accuracy": float(np.median([r["final_accuracy"] for r in rows])), "runs": rows}
    return results


def table(results: dict) -> list:
    """Markdown rows: median step, ratio to the ideal split and to equal shards, accuracy, last split."""
    ideal, equal = results["ideal split"]["median_step_s"], results["equal shards"]["median_step_s"]
    lines = ["| configuration | median step (ms) | vs ideal split | speed-up vs equal shards | final accuracy "
             "| last split (rows per rank) |", "|---|---|---|---|---|---|"]
    for label, r in results.items():
        split = r["runs"][0].get("last_split", "equal")
        lines.append(f"| {label} | {1e3 * r['median_step_s']:.1f} | {r['median_step_s'] / ideal:.2f}x | "
                     f"{equal / r['median_step_s']:.2f}x | {100 * r['final_accuracy']:.2f}% | {split} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--factor", type=float, default=2.0, help="the slow rank's slowdown (default 2)")
    ap.add_argument("--floor", type=float, default=0.02, help="compute floor per equal share, s (default 0.02)")
    ap.add_argument("--every", type=int, default=10, help="--balance-every (default 10)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true", help="one epoch, once, 5 ms floor: a smoke test")
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs, args.repeats, args.floor = 1, 1, 0.005
    if shutil.which("mpiexec") is None:
        ap.error("no mpiexec on PATH")
    load1 = os.getloadavg()[0]
    results = measure(args)
    print(f"p={args.ranks}, rank {args.ranks - 1} slowed {args.factor:g}x every step, compute floor "
          f"{1e3 * args.floor:g} ms per equal share, digits MLP, batch {args.batch_size}, {args.epochs} epoch(s), "
          f"median of {args.repeats} run(s) (load at start {load1:.2f})\n")
    print("\n".join(table(results)))
    if args.json:
        import mpi4py

        write_json(args.json, {"benchmark": "balance", "argv": sys.argv, "settings": vars(args), "results": results,
                               "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                           "load1_at_start": load1, "mpi4py": mpi4py.__version__}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
