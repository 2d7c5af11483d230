#!/usr/bin/env python3
"""Training throughput at p=2 against what this machine can give two ranks, and against torch DDP.

On a small machine the honest ceiling for p=2 is not twice one rank: two independent single-rank runs side by side
already slow each other (memory bus, shared caches, the OS). So every repeat measures, one after the other:

* ``p=1 alone``: ``ring-allreduce train`` with one rank;
* ``2 x p=1 side by side``: two independent one-rank runs started together; their samples/s summed is the
  ceiling for p=2;
* ``p=2``: the same global batch over two ranks (the hand-written ring, the trainer's defaults otherwise);
* ``torch DDP p=2`` (when torch is installed): ``benchmarks/torch_ddp.py``'s Gloo DDP on the same MLP and global
  batch, one torch thread per rank (steps on one fixed batch: no data loading, so this row is if anything
  flattered).

The configurations are interleaved over ``--repeats`` (the order rotates each repeat), for each global batch in
``--batch-sizes``; a run's throughput is the median samples/s of its epochs after the first (data generation and
JIT), one BLAS/Numba thread per rank. Reported: medians over repeats, p=2 as a share of the side-by-side ceiling
and of 2 x p=1, p=2 against DDP, and the 1-minute load average before every run.

Usage (from the repository root; it launches its own jobs, do not run it under mpiexec)::

    python benchmarks/train_ceiling.py --repeats 5 --out benchmarks/results/train_ceiling.json
    python benchmarks/train_ceiling.py --quick              # a small model, one repeat: a smoke test
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train_scaling import THREAD_ENV, run_many  # noqa: E402

from ring_allreduce._io import write_json  # noqa: E402

CONFIGS = ("p=1 alone", "2 x p=1 side by side", "p=2", "torch DDP p=2")


def model_flags(batch: int, quick: bool) -> list:
    """The issue's MLP 1024-1024-1024-10 (2.1 M parameters); 16,384 samples so an epoch lasts seconds and the two
    side-by-side runs overlap for all the epochs that count."""
    if quick:
        return ["--features", "256", "--hidden", "256,256", "--samples", "4096", "--batch-size", str(batch),
                "--algorithm", "ring"]
    return ["--features", "1024", "--hidden", "1024,1024", "--samples", "16384", "--batch-size", str(batch),
            "--algorithm", "ring"]


def ddp_samples_per_s(batch: int, quick: bool) -> float:
    """torch DDP (Gloo) samples/s at p=2 on the same MLP and global batch, from benchmarks/torch_ddp.py."""
    fd, out = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    widths = "256-256-256-10" if quick else "1024-1024-1024-10"
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "torch_ddp.py"), "-n", "2", "--widths", widths,
           "--global-batch", str(batch), "--rounds", "3", "--steps", "10", "--json", out]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, **THREAD_ENV), capture_output=True, text=True,
                              timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
        with open(out) as fh:
            rows = json.load(fh)["rows"]
    finally:
        os.unlink(out)
    return next(r["samples_per_s"] for r in rows if r["mode"] == "ddp_gloo")


def measure_once(name: str, batch: int, quick: bool, epochs: int) -> float:
    flags = model_flags(batch, quick)
    if name == "p=1 alone":
        return run_many([(1, flags)], epochs)[0]["samples_per_s"]
    if name == "2 x p=1 side by side":
        return sum(r["samples_per_s"] for r in run_many([(1, flags), (1, flags)], epochs))
    if name == "p=2":
        return run_many([(2, flags)], epochs)[0]["samples_per_s"]
    return ddp_samples_per_s(batch, quick)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-sizes", default="512,128")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--no-ddp", action="store_true", help="leave out the torch DDP row")
    ap.add_argument("--quick", action="store_true", help="a small model, one repeat, 2 epochs: a smoke test")
    ap.add_argument("--out", default=None, help="write the figures and every run as JSON")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.epochs = 1, 2
    import importlib.util

    configs = [c for c in CONFIGS if c != "torch DDP p=2" or (not args.no_ddp and importlib.util.find_spec("torch"))]
    batches = [int(b) for b in args.batch_sizes.split(",")]
    runs = {(b, c): [] for b in batches for c in configs}
    t0 = time.time()
    for rep in range(args.repeats):
        for b in batches:
            order = configs[rep % len(configs):] + configs[:rep % len(configs)]
            for c in order:
                load = os.getloadavg()[0]
                v = measure_once(c, b, args.quick, args.epochs)
                runs[(b, c)].append({"samples_per_s": v, "load_before": load})
                print(f"  [{rep + 1}/{args.repeats}] batch {b}: {c}: {v:,.0f} samples/s (load {load:.2f})",
                      flush=True)
    rows = []
    for b in batches:
        med = {c: statistics.median(r["samples_per_s"] for r in runs[(b, c)]) for c in configs}
        row = {"global_batch": b, "median_samples_per_s": med,
               "runs": {c: runs[(b, c)] for c in configs},
               "p2_vs_ceiling": med["p=2"] / med["2 x p=1 side by side"],
               "p2_vs_twice_p1": med["p=2"] / (2 * med["p=1 alone"]),
               "side_by_side_vs_twice_p1": med["2 x p=1 side by side"] / (2 * med["p=1 alone"])}
        if "torch DDP p=2" in med:
            row["p2_vs_ddp"] = med["p=2"] / med["torch DDP p=2"]
        rows.append(row)
    print(f"\nmedians of {args.repeats} interleaved repeats, {args.epochs} epochs each (samples/s):")
    print("| global batch | " + " | ".join(configs) + " | p=2 / ceiling | p=2 / (2 x p=1) | p=2 / DDP |")
    print("|---" * (len(configs) + 4) + "|")
    for r in rows:
        ddp = f"{r['p2_vs_ddp']:.2f}x" if "p2_vs_ddp" in r else "-"
        print(f"| {r['global_batch']} | " + " | ".join(f"{r['median_samples_per_s'][c]:,.0f}" for c in configs)
              + f" | {r['p2_vs_ceiling']:.1%} | {r['p2_vs_twice_p1']:.1%} | {ddp} |")
    if args.out:
        write_json(args.out, {"benchmark": "train_ceiling", "rows": rows, "repeats": args.repeats,
                              "epochs": args.epochs, "model_flags": {b: model_flags(b, args.quick) for b in batches},
                              "thread_env": THREAD_ENV, "seconds": time.time() - t0, "cpu_count": os.cpu_count(),
                              "command": "python benchmarks/train_ceiling.py " + " ".join(sys.argv[1:])})
        print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
