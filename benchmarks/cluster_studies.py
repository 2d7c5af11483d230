#!/usr/bin/env python3
"""Studies on the emulated cluster (``ring-allreduce cluster``): the network, not one machine's memory, decides.

Four studies, each a subcommand; each brings up its own cluster (name ``rastudy``, subnet ``10.201.78.0/24``),
runs the real CLI across its hosts and removes the cluster at the end, also on failure. Needs root and iproute2.

* ``busbw``: busbw of every algorithm and native MPI against the link rate, at layouts 2x1, 2x2 and 3x1, with the
  physical limit: each of H hosts must send and receive at least 2(H-1)/H of the vector over its link, so at rate
  R (bytes/s) the time is at least 2(H-1)/H * S / R and busbw (nccl-tests: algbw * 2(p-1)/p) at most
  R * H/(2(H-1)) * 2(p-1)/p.
* ``model``: the alpha-beta-gamma model (``ring_allreduce.bench.model``) fitted to each (layout, rate)'s rows,
  predicted vs measured per algorithm and size (the issue's target: within 20%).
* ``compression``: time to a target test accuracy (and samples/s, final accuracy) per compressor at each rate
  and layout (``ring-allreduce train --compression``).
* ``backup``: median step time of plain synchronous SGD vs ``--backup-workers 1`` when one host's link runs at
  1/5 of the others' rate.

Full runs (for the README's figures; run on a quiet machine, one at a time)::

    sudo OMP_NUM_THREADS=1 python benchmarks/cluster_studies.py busbw --json benchmarks/results/cluster_busbw.json \\
        --plot benchmarks/results/cluster_busbw.png
    sudo OMP_NUM_THREADS=1 python benchmarks/cluster_studies.py model --json benchmarks/results/cluster_model.json
    sudo OMP_NUM_THREADS=1 python benchmarks/cluster_studies.py compression \\
        --json benchmarks/results/cluster_compression.json
    sudo OMP_NUM_THREADS=1 python benchmarks/cluster_studies.py backup --json benchmarks/results/cluster_backup.json

``--smoke`` runs each on a tiny configuration (checks the pipeline end to end; not figures to quote).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ring_allreduce import cluster  # noqa: E402
from ring_allreduce._io import write_json  # noqa: E402
from ring_allreduce.cluster.shaping import format_rate, parse_rate  # noqa: E402

NAME, SUBNET = "rastudy", "10.201.78.0/24"
ALGORITHMS = "ring,tree,recursive_doubling,rabenseifner,hierarchical,auto,mpi"
COMPRESSORS = "none,fp16,int8,topk,sign,powersgd"
LAYOUTS = {"2x1": [1, 1], "2x2": [2, 2], "3x1": [1, 1, 1], "4x1": [1, 1, 1, 1]}


def busbw_limit_GBps(rate_bps: int, sizes) -> float:
    """The largest busbw the links allow (see the module doc)."""
    h, p = len(sizes), sum(sizes)
    if h < 2:
        return float("inf")
    return rate_bps / 8 / 1e9 * h / (2 * (h - 1)) * 2 * (p - 1) / p


def _env():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("NUMBA_NUM_THREADS", "1")
    return env


def _job(st, layout, args, timeout):
    """Run ``python -m ring_allreduce ARGS --json TMP`` across the hosts; return the JSON it wrote."""
    out = tempfile.NamedTemporaryFile(suffix=".json", delete=False).name
    try:
        res = cluster.run(st, [sys.executable, "-m", "ring_allreduce"] + args + ["--json", out],
                          layout="+".join(map(str, LAYOUTS[layout])), env=_env(), capture=True,
                          stream=open(os.devnull, "w"), timeout=timeout)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} at {layout} failed:\n{''.join(res.output)[-3000:]}")
        with open(out) as fh:
            return json.load(fh)
    finally:
        os.unlink(out)


def _cluster(hosts, link=None, link_of=None):
    if cluster.load(NAME) is not None:
        cluster.down(NAME)
    return cluster.up(NAME, hosts=hosts, link=link, link_of=link_of, subnet=SUBNET)


def _sweep(args):
    """Yield ``(cluster state, rate, layout)`` over ``--rates`` x ``--layouts`` on one cluster (removed after)."""
    layouts = args.layouts.split(",")
    st = _cluster(max(len(LAYOUTS[lay]) for lay in layouts))
    try:
        for rate in args.rates.split(","):
            for h in st["hosts"]:
                cluster.set_link(st, h["host"], rate)
            for lay in layouts:
                yield st, rate, lay
    finally:
        cluster.down(NAME)


def study_busbw(args) -> list:
    """Rows: layout, rate, algorithm, size, busbw, limit, fraction of the limit (medians over ``--repeats``)."""
    rows = []
    for st, rate, lay in _sweep(args):
        sizes = LAYOUTS[lay]
        limit = busbw_limit_GBps(parse_rate(rate), sizes)
        doc = _job(st, lay, ["bench", "-b", args.minbytes, "-e", args.maxbytes, "-f", "4", "-n", str(args.iters),
                             "-w", "2", "--repeats", str(args.repeats), "-c", "--algorithms", args.algorithms, "-q"],
                   args.timeout)
        for r in doc["rows"]:
            rows.append({"layout": lay, "rate": rate, "algorithm": r["algorithm"], "size_bytes": r["size_bytes"],
                         "time_us": r["time_us"], "busbw_GBps": r["busbw_GBps"], "limit_GBps": limit,
                         "of_limit": r["busbw_GBps"] / limit, "wrong": r["wrong"]})
            print(f"{lay:4s} {rate:>8s} {r['algorithm']:20s} {r['size_bytes']:>10d} B {r['busbw_GBps']:7.3f} GB/s  "
                  f"{100 * r['busbw_GBps'] / limit:5.1f}% of {limit:.3f}", flush=True)
    return rows


def study_model(args, rows=None) -> list:
    """Fit the model per (layout, rate) to measured rows; rows: predicted vs measured time and the error."""
    from ring_allreduce.bench import model

    rows = rows or study_busbw(args)
    out = []
    for key in sorted({(r["layout"], r["rate"]) for r in rows}):
        mine = [dict(r, count=r["size_bytes"] // 4, dtype="float32") for r in rows if (r["layout"], r["rate"]) == key]
        p = sum(LAYOUTS[key[0]])
        fit = model.fit(mine, p)
        for r in mine:
            pred = fit.predict(r["algorithm"], r["size_bytes"])
            if pred is None:
                continue
            err = pred * 1e6 / r["time_us"] - 1
            out.append({"layout": key[0], "rate": key[1], "algorithm": r["algorithm"], "size_bytes": r["size_bytes"],
                        "measured_us": r["time_us"], "predicted_us": pred * 1e6, "error": err, "fit": fit.as_dict()})
            print(f"{key[0]:4s} {key[1]:>8s} {r['algorithm']:20s} {r['size_bytes']:>10d} B measured "
                  f"{r['time_us']:10.0f} us predicted {pred * 1e6:10.0f} us ({100 * err:+.0f}%)", flush=True)
    return out


def _train_row(res, target):
    elapsed, t_target = 0.0, None
    for h in res["history"]:
        elapsed += h["time_s"]
        if t_target is None and h["test_accuracy"] is not None and h["test_accuracy"] >= target:
            t_target = elapsed
    return {"time_to_target_s": t_target, "final_accuracy": res["test_accuracy"],
            "samples_per_s": res["samples_per_s"], "median_step_s": res["step_time"][0]["median_s"],
            "train_time_s": res["train_time_s"], "comm_fraction": res.get("comm_fraction"),
            "bytes_per_step": max(res["bytes_sent"]) / max(res["steps"], 1)}


def _median_rows(rows):
    out = {}
    for k in rows[0]:
        vals = [r[k] for r in rows if r[k] is not None]
        out[k] = statistics.median(vals) if len(vals) == len(rows) else None
    return out


def study_compression(args) -> list:
    rows = []
    comps = args.compressors.split(",")
    for st, rate, lay in _sweep(args):
        runs = {comp: [] for comp in comps}
        for _ in range(args.repeats):  # interleaved: every compressor sees the same machine state
            for comp in comps:
                runs[comp].append(_train_row(_job(st, lay, ["train", "--dataset", args.dataset, "--epochs",
                                                            str(args.epochs), "--compression", comp, "--quiet"],
                                                  args.timeout), args.target))
        for comp in comps:
            row = dict({"layout": lay, "rate": rate, "compression": comp, "dataset": args.dataset,
                        "target": args.target, "repeats": args.repeats}, **_median_rows(runs[comp]))
            rows.append(row)
            tt = row["time_to_target_s"]
            print(f"{lay:4s} {rate:>8s} {comp:9s} time to {100 * args.target:g}%: "
                  f"{'never' if tt is None else f'{tt:6.1f} s'}  final {100 * row['final_accuracy']:.2f}%  "
                  f"{row['samples_per_s']:,.0f} samples/s", flush=True)
    return rows


def study_backup(args) -> list:
    sizes = LAYOUTS[args.layout]
    slow = f"h{len(sizes)}"
    slow_rate = format_rate(parse_rate(args.rate) // 5)
    st = _cluster(len(sizes), link=args.rate, link_of={slow: slow_rate})
    rows = []
    try:
        for b in (0, 1):
            runs = [_train_row(_job(st, args.layout, ["train", "--dataset", args.dataset, "--epochs", str(args.epochs),
                                                      "--backup-workers", str(b), "--quiet"], args.timeout),
                               args.target) for _ in range(args.repeats)]
            row = dict({"layout": args.layout, "rate": args.rate, "slow_host": slow, "slow_rate": slow_rate,
                        "backup_workers": b}, **_median_rows(runs))
            rows.append(row)
            print(f"{args.layout} {args.rate} ({slow} at {slow_rate}) backup workers {b}: median step "
                  f"{1e3 * row['median_step_s']:.1f} ms, final {100 * row['final_accuracy']:.2f}%", flush=True)
    finally:
        cluster.down(NAME)
    return rows


def plot_busbw(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layouts = sorted({r["layout"] for r in rows})
    size = max(r["size_bytes"] for r in rows)
    fig, axes = plt.subplots(1, len(layouts), figsize=(5 * len(layouts), 4), squeeze=False)
    for ax, lay in zip(axes[0], layouts):
        mine = [r for r in rows if r["layout"] == lay and r["size_bytes"] == size]
        rates = sorted({r["rate"] for r in mine}, key=parse_rate)
        x = [parse_rate(v) / 1e9 for v in rates]
        for alg in sorted({r["algorithm"] for r in mine}):
            y = [next((r["busbw_GBps"] for r in mine if r["algorithm"] == alg and r["rate"] == v), None) for v in rates]
            ax.plot(x, y, marker="o", label=alg)
        ax.plot(x, [next(r["limit_GBps"] for r in mine if r["rate"] == v) for v in rates], "k--",
                label="physical limit")
        ax.set(title=f"{lay}, {size >> 20} MiB", xlabel="link rate (Gbit/s)", ylabel="busbw (GB/s)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study", choices=("busbw", "model", "compression", "backup"))
    ap.add_argument("--smoke", action="store_true", help="a tiny configuration: checks the pipeline, not figures")
    ap.add_argument("--rates", default="100mbit,500mbit,1gbit,2gbit")
    ap.add_argument("--layouts", default="2x1,2x2,3x1")
    ap.add_argument("--algorithms", default=ALGORITHMS)
    ap.add_argument("--minbytes", default="1M")
    ap.add_argument("--maxbytes", default="64M")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compressors", default=COMPRESSORS)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--target", type=float, default=0.96, help="test accuracy for time-to-accuracy")
    ap.add_argument("--layout", default="4x1", help="backup: hosts x ranks (the last host has the slow link)")
    ap.add_argument("--rate", default="1gbit", help="backup: the fast hosts' rate (the slow one gets 1/5)")
    ap.add_argument("--timeout", type=float, default=1800, help="per job, seconds")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None, help="busbw: PNG of busbw against link rate at the largest size")
    args = ap.parse_args(argv)
    if args.smoke:
        args.rates, args.layouts, args.minbytes, args.maxbytes = "1gbit", "2x1", "256K", "1M"
        args.algorithms, args.iters, args.repeats = "ring,mpi", 2, 1
        args.compressors, args.epochs, args.layout, args.target = "none,fp16", 1, "3x1", 0.5
    study = {"busbw": study_busbw, "model": study_model, "compression": study_compression,
             "backup": study_backup}[args.study]
    measured = None
    if args.study == "model":  # the busbw sweep it fits is kept (and plotted) too: one run gives both studies
        measured = study_busbw(args)
        rows = study_model(args, measured)
    else:
        rows = study(args)
    if args.json:
        doc = {"study": args.study, "args": vars(args), "rows": rows}
        if measured is not None:
            doc["busbw_rows"] = measured
        write_json(args.json, doc)
    if args.plot and args.study in ("busbw", "model"):
        plot_busbw(measured if measured is not None else rows, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
