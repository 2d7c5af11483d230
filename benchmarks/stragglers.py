#!/usr/bin/env python3
"""Backup workers against a straggler: step time and time to accuracy, plain synchronous SGD vs ``b = 1``.

Runs the real trainer (``ring-allreduce train`` on digits) under ``mpiexec -n P`` for four configurations -
no straggler, one rank slowed ``FACTOR`` x with plain synchronous SGD, the same with ``--backup-workers 1``, and
``b = 1`` without a straggler - each ``--repeats`` times, and reports per configuration the median and p99 step
time (seen from rank 0, which is never the straggler; first step excluded), the wall time of training until the
test accuracy first reaches ``--target`` (evaluation excluded) and the final test accuracy.

Why a compute floor: the digits MLP computes a step in about a millisecond, less than the exchange, so slowing its
compute 5x barely changes a step. ``--compute-floor`` pads every rank's compute to at least ``--floor`` seconds
(by sleeping, so four ranks can share two cores), which makes compute dominate as in a real model; the straggler
then sleeps ``(FACTOR - 1) * floor`` more. The figures measure the protocol's ability to hide a slow rank, not
the MLP's arithmetic. MPICH is told to yield while it waits (``MPIR_CVAR_ENABLE_HEAVY_YIELD=1``): with four
ranks on two cores its busy-polling otherwise inflates every collective, the synchronous baseline most.

Usage (from the repository root; not under mpiexec - it launches the jobs itself)::

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/stragglers.py --json benchmarks/results/stragglers.json \\
        --plot benchmarks/results/stragglers_timeline.png

``--quick`` runs two epochs once (a smoke test, not figures to quote).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

from ring_allreduce._io import write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks._jobs import run_train  # noqa: E402

CONFIGS = [  # (label, straggler?, backup workers)
    ("no straggler, sync", False, 0),
    ("straggler, sync", True, 0),
    ("straggler, b=1", True, 1),
    ("no straggler, b=1", False, 1),
]


def run_one(args, straggler: bool, b: int, trace: str = None) -> dict:
    """Launch one training job; return its result JSON."""
    train_args = ["--dataset", "digits", "--kernel", "numpy", "--epochs", args.epochs, "--seed", args.seed,
                  "--compute-floor", args.floor, "--backup-workers", b]
    if straggler:
        train_args += ["--straggle", f"{args.ranks - 1}:{args.factor:g}"]
    if trace:
        train_args += ["--timeline", trace]
    return run_train(args.ranks, train_args, args.heavy_yield)


def summarize(res: dict, target: float) -> dict:
    """Step-time figures from rank 0 and the time to ``target`` accuracy from the per-epoch history."""
    st = res["step_time"][0]
    elapsed, t_target = 0.0, None
    for h in res["history"]:
        elapsed += h["time_s"]
        if t_target is None and h["test_accuracy"] is not None and h["test_accuracy"] >= target:
            t_target = elapsed
    row = {"median_step_s": st["median_s"], "p99_step_s": st["p99_s"], "time_to_target_s": t_target,
           "final_accuracy": res["test_accuracy"], "train_time_s": res["train_time_s"], "steps": res["steps"],
           "params_identical": res["params_identical"]}
    if "backup" in res:
        row["contributions"] = res["backup"]["contributions"]
    return row


def median_rows(rows):
    out = {}
    for k in ("median_step_s", "p99_step_s", "time_to_target_s", "final_accuracy", "train_time_s"):
        vals = [r[k] for r in rows if r[k] is not None]
        out[k] = float(np.median(vals)) if len(vals) == len(rows) else None
    out["repeats"] = rows
    return out


def plot(traces: dict, path: str, first_step: int = 10, window_ms: float = 1000.0) -> None:
    """Draw each trace's per-rank phases over the same time window, one panel per configuration (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ring_allreduce.resilience.timeline import load

    # phases nest (the floor and the injected sleep happen inside compute): draw the inner ones on top
    colors = {"compute": "#4c72b0", "compute floor": "#9db4d6", "straggle": "#dd8452", "wait": "#bbbbbb",
              "sync": "#bbbbbb", "comm": "#55a868", "update": "#8172b3", "catchup": "#c44e52", "serve": "#55a868"}
    order = {"compute": 0, "wait": 0, "sync": 0, "compute floor": 1, "straggle": 1}
    fig, axes = plt.subplots(len(traces), 1, figsize=(11, 2.2 * len(traces) + 0.6), squeeze=False)
    for ax, (label, tr) in zip(axes[:, 0], traces.items()):
        events = [e for e in load(tr) if e["ph"] == "X" and e["name"] in colors]
        lo = min(e["ts"] for e in events if e["args"].get("step") == first_step)
        hi = lo + window_ms * 1e3
        done = {e["args"]["step"] for e in load(tr) if e["name"] == "step" and lo <= e["ts"] + e["dur"] <= hi}
        for e in sorted(events, key=lambda e: order.get(e["name"], 2)):
            if e["ts"] + e["dur"] < lo or e["ts"] > hi:
                continue
            ax.broken_barh([((e["ts"] - lo) / 1e3, max(e["dur"] / 1e3, 0.05))], (e["pid"] - 0.4, 0.8),
                           color=colors[e["name"]])
        ranks = sorted({e["pid"] for e in events})
        ax.set_title(f"{label}: {window_ms:g} ms from step {first_step} ({len(done)} steps completed)", fontsize=10)
        ax.set_yticks(ranks)
        ax.set_yticklabels([f"rank {p}" for p in ranks])
        ax.set_xlim(0, (hi - lo) / 1e3)
        ax.invert_yaxis()
    axes[-1, 0].set_xlabel("ms")
    shown = ["compute", "compute floor", "straggle", "wait", "comm", "update", "catchup"]
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[k]) for k in shown]
    fig.legend(handles, shown, loc="upper right", ncol=len(shown), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--factor", type=float, default=5.0, help="straggler slowdown (default 5)")
    ap.add_argument("--floor", type=float, default=0.02, help="compute floor per step in seconds (default 0.02)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--target", type=float, default=0.96, help="test accuracy for time-to-target (default 0.96)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None, help="PNG of the straggler runs' timelines (plain sync vs b=1)")
    ap.add_argument("--no-heavy-yield", dest="heavy_yield", action="store_false",
                    help="let MPICH ranks busy-poll (default: MPIR_CVAR_ENABLE_HEAVY_YIELD=1, as p > cores needs)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs, args.repeats = 2, 1
    if shutil.which("mpiexec") is None:
        ap.error("no mpiexec on PATH")
    load1 = os.getloadavg()[0]
    trace_dir = tempfile.mkdtemp(prefix="ra-stragglers-")
    results, traces = {}, {}
    for label, straggler, b in CONFIGS:
        rows = []
        for k in range(args.repeats):
            trace = None
            if straggler and k == 0:
                trace = os.path.join(trace_dir, f"b{b}.json")
                traces[label] = trace
            t0 = time.time()
            rows.append(summarize(run_one(args, straggler, b, trace), args.target))
            print(f"  {label:20s} run {k + 1}: median step {1e3 * rows[-1]['median_step_s']:6.1f} ms "
                  f"({time.time() - t0:.0f} s)", flush=True)
        results[label] = median_rows(rows)
    base = results["no straggler, sync"]["median_step_s"]
    print(f"\np={args.ranks}, rank {args.ranks - 1} slowed {args.factor:g}x, compute floor {1e3 * args.floor:g} ms, "
          f"digits MLP, {args.epochs} epochs, median of {args.repeats} runs (load at start {load1:.2f})\n")
    print(f"| configuration | median step (ms) | vs no straggler | p99 step (ms) | time to {100 * args.target:g}% (s) "
          f"| final accuracy |")
    print("|---|---|---|---|---|---|")
    for label, r in results.items():
        ttt = "not reached" if r["time_to_target_s"] is None else f"{r['time_to_target_s']:.1f}"
        print(f"| {label} | {1e3 * r['median_step_s']:.1f} | {r['median_step_s'] / base:.2f}x | "
              f"{1e3 * r['p99_step_s']:.1f} | {ttt} | {100 * r['final_accuracy']:.2f}% |")
    if args.json:
        import mpi4py

        doc = {"benchmark": "stragglers", "argv": sys.argv, "settings": vars(args), "results": results,
               "ratios_vs_no_straggler": {k: v["median_step_s"] / base for k, v in results.items()},
               "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load1_at_start": load1,
                           "mpi4py": mpi4py.__version__, "thread_level": "multiple (mpi4py default)"}}
        write_json(args.json, doc)
    if args.plot and traces:
        plot(traces, args.plot)
    shutil.rmtree(trace_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
