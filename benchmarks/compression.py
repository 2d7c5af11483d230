#!/usr/bin/env python3
"""Gradient compression benchmark: every compressor, with and without error feedback, trained with the real
trainer on digits and on a larger synthetic MLP.

Per run: wire bytes per step per rank (counted at the transport), ratio vs ``none`` (the same trainer through the
compression hook, uncompressed), the payload ratio on the MLP's weight matrices, final test accuracy, time per
step and the compression overhead (seconds per step in the hook not spent communicating). All runs use
``--overlap none`` so that every row times the same blocking exchange.

Usage (one BLAS / Numba thread per rank; rank 0 prints the table and writes the JSON)::

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 timeout 1800 mpiexec -n 2 python benchmarks/compression.py \\
        --json benchmarks/results/compression.json

``--quick`` runs a few steps of each configuration (a smoke test, not figures to quote). ``--kernels`` times the
CPU compression kernels, NumPy vs Numba (``python benchmarks/compression.py --kernels``, no mpiexec).
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time

import numpy as np

from ring_allreduce._io import write_json

#: workloads: name -> trainer flags (digits with the trainer's defaults; a wider synthetic MLP)
WORKLOADS = {
    "digits": ["--dataset", "digits"],
    # lr 0.01: at the digits default (0.05) with momentum 0.9 error feedback on sign/top-k is unstable on this
    # wider net; 6 epochs: error feedback lags early (its residual is a delay) and catches up by epoch 5
    "synthetic-mlp": ["--dataset", "synthetic", "--features", "256", "--hidden", "512,512", "--samples", "8192",
                      "--epochs", "6", "--lr", "0.01"],
}

#: compressor -> extra flags (top-k and random-k keep 1%, PowerSGD rank 2)
SETTINGS = {
    "topk": ["--compression-ratio", "0.01"],
    "randomk": ["--compression-ratio", "0.01"],
    "powersgd": ["--powersgd-rank", "2"],
}


def configurations(names):
    """``(compressor, error_feedback)`` pairs: every lossy compressor with and without error feedback."""
    out = [("none", False)]
    for n in names:
        if n != "none":
            out += [(n, True), (n, False)]
    return out


def weight_matrix_ratio(state) -> float:
    """Payload ratio restricted to the weight matrices (float32 size / compressed size), from each bucket's layout."""
    raw = sent = 0
    for b in state._buckets.values():
        comp = b.compressor
        if comp.name == "powersgd":
            compressed, _ = comp.plan(b.layout)
            raw += sum(n * m for _, n, m, _ in compressed)
            sent += sum((n + m) * r for _, n, m, r in compressed)
        else:
            mats = [s for s in b.layout.shapes if len(s) == 2]
            share = sum(math.prod(s) for s in mats) / b.layout.size
            raw += sum(math.prod(s) for s in mats)
            sent += share * comp.payload_nbytes(b.layout) / 4
    return raw / sent if sent else None


def run_one(comm, workload_flags, name, ef, seed, quick):
    """Train once and return a result row (the same on every rank)."""
    from ring_allreduce.compression import train_plugin
    from ring_allreduce.train import cli

    argv = list(workload_flags) + ["--compression", name, "--overlap", "none", "--algorithm", "ring", "--quiet",
                                   "--seed", str(seed)] + SETTINGS.get(name, [])
    if name != "none":
        argv.append("--error-feedback" if ef else "--no-error-feedback")
    if quick:
        argv += ["--max-steps", "20", "--epochs", "1"]
    args = cli.parse(argv, [train_plugin])
    trainer = cli.build(args, comm)
    train_plugin.after_build(args, trainer)
    comm.Barrier()
    result = trainer.fit()
    result.update(train_plugin.report(args, trainer, result))
    _, accuracy = trainer.evaluate()  # collective; also covers --quick runs that end mid-epoch
    state = trainer.optimizer.hook_state
    summary = state.summary()
    steps = max(result["steps"], 1)
    codec = comm.allgather(summary["codec_s_per_step"])
    return {
        "compressor": name, "error_feedback": ef, "seed": seed,
        "wire_bytes_per_step": result["wire_bytes_per_step"][0],
        "wire_bytes_per_step_all_ranks": result["wire_bytes_per_step"],
        "payload_ratio": summary["compression_ratio"],
        "weight_matrix_ratio": weight_matrix_ratio(state),
        "test_accuracy": accuracy,
        "time_per_step_ms": 1e3 * result["train_time_s"] / steps,
        "hook_ms_per_step": 1e3 * summary["hook_s_per_step"],
        "compression_overhead_ms_per_step": 1e3 * float(np.median(codec)),
        "steps": result["steps"], "params_identical": result["params_identical"],
        "argv": argv,
    }


def rows(comm, workloads, names, seeds, quick, log):
    """Every configuration on every workload; ``seeds`` maps workload -> seeds (accuracy averaged over them)."""
    out = []
    for name in names:  # warm-up: compile every Numba kernel (model and compression) before anything is timed
        run_one(comm, WORKLOADS["digits"], name, name != "none", 0, True)
    for wl in workloads:
        for name, ef in configurations(names):
            per_seed = [run_one(comm, WORKLOADS[wl], name, ef, s, quick) for s in seeds[wl]]
            row = dict(per_seed[0])
            row["workload"] = wl
            row["test_accuracy_per_seed"] = [r["test_accuracy"] for r in per_seed]
            row["test_accuracy"] = float(np.mean(row["test_accuracy_per_seed"]))
            for k in ("time_per_step_ms", "hook_ms_per_step", "compression_overhead_ms_per_step"):
                row[k] = float(np.median([r[k] for r in per_seed]))
            out.append(row)
            log(f"{wl:14s} {name:9s} ef={'on ' if ef else 'off'} bytes/step {row['wire_bytes_per_step']:>12,.0f} "
                f"acc {100 * row['test_accuracy']:6.2f}% {row['time_per_step_ms']:7.2f} ms/step")
    for wl in workloads:
        base = next(r for r in out if r["workload"] == wl and r["compressor"] == "none")
        for r in out:
            if r["workload"] == wl:
                r["ratio_vs_none"] = base["wire_bytes_per_step"] / r["wire_bytes_per_step"]
                r["accuracy_delta_points"] = 100 * (r["test_accuracy"] - base["test_accuracy"])
                r["overhead_vs_none_ms"] = r["time_per_step_ms"] - base["time_per_step_ms"]
    return out


def kernel_rows(n: int = 400_000, reps: int = 30) -> list:
    """Median milliseconds of each compression kernel of the CPU sets on ``n`` float32 elements (one thread)."""
    from ring_allreduce.compression import kernels as kernel_sets

    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    u = np.random.default_rng(1).random(n, dtype=np.float32)
    out = np.zeros(n, np.float32)
    k = n // 100
    out_rows = []
    for name in ("numpy", "numba"):
        ks = kernel_sets.get(name)
        bits, scale = ks.sign_encode(x)
        q, s8 = ks.int8_encode(x)
        lv, norms = ks.qsgd_encode(x, 127, u, 512)
        idx = ks.topk_indices(x, k)
        vals = x[idx]
        cases = {
            "sign_encode": lambda: ks.sign_encode(x),
            "sign_decode(add)": lambda: ks.sign_decode(bits, n, scale, out, True),
            "int8_encode": lambda: ks.int8_encode(x),
            "int8_decode(add)": lambda: ks.int8_decode(q, s8, out, True),
            "qsgd_encode": lambda: ks.qsgd_encode(x, 127, u, 512),
            "qsgd_decode(add)": lambda: ks.qsgd_decode(lv, norms, 127, 512, out, True),
            "topk_indices(1%)": lambda: ks.topk_indices(x, k),
            "scatter(add, 1%)": lambda: ks.scatter(idx, vals, out, True),
        }
        for case, fn in cases.items():
            fn()  # compile / warm
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            out_rows.append({"set": name, "kernel": case, "n": n, "ms": 1e3 * float(np.median(ts))})
    return out_rows


def kernel_table(rs) -> str:
    cases = list(dict.fromkeys(r["kernel"] for r in rs))
    ms = {(r["set"], r["kernel"]): r["ms"] for r in rs}
    lines = ["| kernel (400k float32) | NumPy ms | Numba ms | speed-up |", "|---|---|---|---|"]
    for c in cases:
        a, b = ms[("numpy", c)], ms[("numba", c)]
        lines.append(f"| {c} | {a:.3f} | {b:.3f} | {a / b:.1f}x |")
    return "\n".join(lines)


def table(rs) -> str:
    """A Markdown table of the rows."""
    head = ("| workload | compressor | EF | bytes/step/rank | ratio vs none | weight-matrix ratio | test acc | "
            "Δ acc (pts) | ms/step | codec ms/step |")
    lines = [head, "|" + "---|" * 10]
    for r in rs:
        wm = r["weight_matrix_ratio"]
        lines.append(
            f"| {r['workload']} | {r['compressor']} | {'on' if r['error_feedback'] else 'off'} | "
            f"{r['wire_bytes_per_step']:,.0f} | {r['ratio_vs_none']:.1f}x | {'' if wm is None else f'{wm:.1f}x'} | "
            f"{100 * r['test_accuracy']:.2f}% | {r['accuracy_delta_points']:+.2f} | {r['time_per_step_ms']:.2f} | "
            f"{r['compression_overhead_ms_per_step']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from mpi4py import MPI

    from ring_allreduce.compression import names

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated: {', '.join(WORKLOADS)}")
    ap.add_argument("--compressors", default=None, help="comma-separated (default: every registered compressor)")
    ap.add_argument("--seeds", default="0,1,2", help="digits seeds (comma-separated); accuracy is their mean")
    ap.add_argument("--synthetic-seeds", default="0", help="synthetic-mlp seeds")
    ap.add_argument("--quick", action="store_true", help="20 steps per run: a smoke test, not figures to quote")
    ap.add_argument("--kernels", action="store_true",
                    help="time the CPU compression kernels instead (NumPy vs Numba; run without mpiexec)")
    ap.add_argument("--json", default=None, metavar="PATH")
    args = ap.parse_args(argv)
    if args.kernels:
        rs = kernel_rows()
        print(kernel_table(rs))
        if args.json:
            write_json(args.json, {"benchmark": "compression-kernels", "load_avg_at_start": os.getloadavg(),
                               "command": " ".join(["python"] + sys.argv), "rows": rs})
        return 0
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    workloads = [w for w in args.workloads.split(",") if w]
    for w in workloads:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w!r}; valid: {', '.join(WORKLOADS)}")
    comps = names() if args.compressors is None else [c for c in args.compressors.split(",") if c]
    seeds = {"digits": [int(s) for s in args.seeds.split(",") if s],
             "synthetic-mlp": [int(s) for s in args.synthetic_seeds.split(",") if s]}
    log = (lambda *a: print(*a, flush=True)) if rank == 0 else (lambda *a: None)
    t0 = time.time()
    rs = rows(comm, workloads, comps, seeds, args.quick, log)
    if rank == 0:
        print()
        print(table(rs))
        doc = {
            "benchmark": "compression", "p": comm.Get_size(), "thread_level": MPI.Query_thread(),
            "mpi": MPI.Get_library_version().splitlines()[0], "python": platform.python_version(),
            "numpy": np.__version__, "load_avg_at_start": os.getloadavg(), "wall_s": time.time() - t0,
            "command": " ".join(["mpiexec", "-n", str(comm.Get_size()), "python"] + sys.argv),
            "quick": args.quick, "seeds": seeds, "rows": rs,
        }
        if args.json:
            write_json(args.json, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
