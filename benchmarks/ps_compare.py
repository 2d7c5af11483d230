#!/usr/bin/env python3
"""Star vs ring vs tree: parameter server (BSP/SSP/ASP), allreduce and local SGD on an emulated network.

Runs the real trainer (``ring-allreduce train``) for every mode below, per layout (``2x2``: 2 hosts x 2 ranks,
``4x1``) and task (digits, a synthetic classification), with the same global batch and learning-rate schedule,
optionally again with the last rank slowed 5x (``--straggle``, where ``allreduce-ring`` with ``--backup-workers 1``
joins as the fourth answer to a straggler), and prints one table row per run:

* ``B/host/step``: bytes per host per training step, counted at the transport (``bytes_sent`` of the host's ranks),
  next to the analytical value (below), the analytical bytes to *other* hosts (what the link must carry) and,
  with the ``cluster`` launcher, the bytes the host's link carried (interface counters of ``ring-allreduce
  cluster status``, which add TCP/IP headers, MPI envelopes and heartbeats);
* median and mean step time (seen from rank 0: a server in PS mode, whose step follows the slowest worker; the
  mean includes local SGD's averaging steps), time until the test accuracy first reaches the target (evaluation
  excluded), final accuracy.

Analytical bytes per rank and step (n parameters of b bytes, p ranks, W = p - S workers, S servers; the per-rank
counts of :mod:`ring_allreduce.ps.layout` add the statistics and the synchronisation steps exactly):

* allreduce ring: ``2 (p-1)/p n b`` per rank (reduce-scatter + allgather); tree: ``n b`` to the parent plus
  ``n b`` per child (binomial tree; the root's host carries ``log2 p`` vectors); hierarchical: no per-rank value;
* PS: a worker pushes ``n b``; server s answers ``W n_s b`` (``n_s ~ n/S``): the server's host carries
  ``W/S n b`` per step, against ``2 (p-1)/p n b`` for the ring: the star's server link saturates first
  (alpha-beta: step time >= W n b / (S * link bandwidth));
* local SGD with H local steps: ``2 * 2 (p-1)/p n b / H`` (parameters and momentum averaged every H steps): it
  pays when ``(1 - 2/H)`` of the ring's communication time is worth more than the accuracy lost per step.

Launchers (``--launcher``): ``cluster`` (default: ``ring-allreduce cluster up --hosts H --link RATE --name NAME``,
``ring-allreduce cluster run --name NAME --ranks-per-host K -- CMD``, ``down`` at the end) or ``mpiexec``
(``mpiexec -n H*K CMD`` on this machine: a smoke test; "hosts" are then blocks of K ranks).

Usage (from the repository root; it launches the jobs itself)::

    python benchmarks/ps_compare.py --json benchmarks/results/ps_compare.json            # the emulated cluster
    python benchmarks/ps_compare.py --launcher mpiexec --quick                            # smoke test here
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ring_allreduce._io import write_json  # noqa: E402
from ring_allreduce.ps import layout  # noqa: E402

MODES = {  # label -> train flags
    "allreduce-ring": ["--algorithm", "ring"],
    # the nonblocking overlap (the trainer's default) runs the hand-written ring whatever --algorithm says
    "allreduce-tree": ["--algorithm", "tree", "--overlap", "thread"],
    "allreduce-hierarchical": ["--algorithm", "hierarchical", "--overlap", "thread"],
    "ps1-bsp": ["--mode", "ps", "--servers", "1"],
    "ps1-ssp3": ["--mode", "ps", "--servers", "1", "--consistency", "ssp", "--staleness", "3"],
    "ps1-asp": ["--mode", "ps", "--servers", "1", "--consistency", "asp"],
    "ps2-bsp": ["--mode", "ps", "--servers", "2"],
    "ps2-ssp3": ["--mode", "ps", "--servers", "2", "--consistency", "ssp", "--staleness", "3"],
    "ps2-asp": ["--mode", "ps", "--servers", "2", "--consistency", "asp"],
    "local-h4": ["--local-steps", "4"],
    "local-h16": ["--local-steps", "16"],
}
STRAGGLE_ONLY = {"allreduce-ring-backup1": ["--algorithm", "ring", "--backup-workers", "1"]}
TASKS = {"digits": ["--dataset", "digits"],
         "synthetic": ["--dataset", "synthetic", "--samples", "8192", "--features", "256", "--classes", "10"]}


def n_params(task: str, hidden: str) -> int:
    sizes = [64 if task == "digits" else 256, *[int(h) for h in hidden.split(",")], 10]
    return sum(a * b + b for a, b in zip(sizes, sizes[1:]))


def analytical_rank_bytes(res: dict, mode: str, p: int, n: int, itemsize: int = 4) -> list:
    """Per-rank bytes of the whole run: from the trainer's own model (PS, local SGD) or the allreduce formulas."""
    for key in ("ps", "local_sgd"):
        if key in res:
            return [float("nan") if b is None else b for b in res[key]["analytical_bytes"]]
    algo = MODES.get(mode, STRAGGLE_ONLY.get(mode))[1]
    if "--backup-workers" in MODES.get(mode, STRAGGLE_ONLY.get(mode)):
        return [float("nan")] * p  # the contributor set varies per step
    per_step = [layout.allreduce_bytes(algo, p, r, n, itemsize) + layout.allreduce_bytes(algo, p, r, layout.STATS, 8)
                for r in range(p)]
    return [res["steps"] * b for b in per_step]


def _allreduce_flows(algo: str, p: int, count: int, itemsize: int, times: float, flows: dict) -> bool:
    """Add ``times`` allreduces of ``count`` elements to ``flows[(src, dst)]`` (bytes); False: no model."""
    from ring_allreduce.schedules import binomial_tree

    for r in range(p):
        if algo == "ring":
            dsts = {(r + 1) % p: layout.allreduce_bytes("ring", p, r, count, itemsize)}
        elif algo == "tree":
            node = binomial_tree(r, p)
            dsts = {d: count * itemsize for d in ([node.parent] if node.parent is not None else []) + node.children}
        else:
            return False
        for d, nbytes in dsts.items():
            flows[(r, d)] = flows.get((r, d), 0.0) + times * nbytes
    return True


def cross_host_bytes(res: dict, mode: str, hosts: list, n: int, itemsize: int = 4):
    """Analytical bytes each host sends to *other* hosts over the run (what its link carries, less headers), or
    None where there is no per-message model (hierarchical, backup workers)."""
    p, flows = len(hosts), {}
    if "ps" in res:
        ps = res["ps"]
        S, b, syncs = ps["servers"], ps["shards"], ps["sync_steps"]
        for s in range(S):
            n_s = (b[s + 1] - b[s]) * itemsize
            for r in range(p):
                if r >= S:  # pushes every step; answers except at syncs, where the server sends w and v to all
                    flows[(r, s)] = ps["steps"] * n_s
                    flows[(s, r)] = (ps["steps"] - syncs) * n_s + syncs * 2 * n_s
                elif r != s:
                    flows[(s, r)] = syncs * 2 * n_s
        _allreduce_flows("ring", p, layout.STATS, 8, syncs, flows)  # the statistics at each sync
    elif "local_sgd" in res:
        ls = res["local_sgd"]
        _allreduce_flows("ring", p, n, itemsize, 2 * ls["averagings"] + ls["synchronous_steps"], flows)
        _allreduce_flows("ring", p, layout.STATS + 1, 8, ls["averagings"], flows)
        _allreduce_flows("ring", p, layout.STATS, 8, ls["synchronous_steps"], flows)
    else:
        flags = MODES.get(mode, STRAGGLE_ONLY.get(mode))
        if "--backup-workers" in flags:
            return None
        algo = flags[1]
        if not (_allreduce_flows(algo, p, n, itemsize, res["steps"], flows)
                and _allreduce_flows(algo, p, layout.STATS, 8, res["steps"], flows)):
            return None
    out = {h: 0.0 for h in hosts}
    for (src, dst), nbytes in flows.items():
        if hosts[src] != hosts[dst]:
            out[hosts[src]] += nbytes
    return out


def launch(args, layout_, cmd: list) -> None:
    hosts, k = (int(x) for x in layout_.split("x"))
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", PYTHONPATH=ROOT)
    if args.launcher == "cluster":
        full = [sys.executable, "-m", "ring_allreduce", "cluster", "run", "--name", args.name,
                "--ranks-per-host", str(k), "--"] + cmd
    else:
        from tests.run import mpiexec_prefix

        full = mpiexec_prefix(hosts * k) + cmd
        if hosts * k > (os.cpu_count() or 1):
            env["MPIR_CVAR_ENABLE_HEAVY_YIELD"] = "1"
    proc = subprocess.run(full, capture_output=True, text=True, env=env, timeout=args.timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(full)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                           f"{proc.stderr[-3000:]}")


def cluster(args, *words) -> dict:
    cmd = [sys.executable, "-m", "ring_allreduce", "cluster", *words, "--name", args.name]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out) if "--json" in words else {}


def link_bytes(args) -> dict:
    if args.launcher != "cluster":
        return {}
    return {h["hostname"]: h["bytes"]["sent"] for h in cluster(args, "status", "--json")["hosts"]}


def run_one(args, layout_: str, task: str, mode: str, flags: list, straggle: bool) -> dict:
    hosts_n, k = (int(x) for x in layout_.split("x"))
    p = hosts_n * k
    out = tempfile.NamedTemporaryFile(suffix=".json", delete=False).name
    cmd = [sys.executable, "-m", "ring_allreduce", "train", *TASKS[task], "--hidden", args.hidden,
           "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
           "--bucket-mb", "0", "--kernel", "numpy", "--compute-floor", str(args.floor), "--seed", str(args.seed),
           "--quiet", "--json", out, *flags]
    if straggle:
        cmd += ["--straggle", args.straggle_spec or f"{p - 1}:{args.factor:g}"]
    before = link_bytes(args)
    launch(args, layout_, cmd)
    after = link_bytes(args)
    with open(out) as fh:
        res = json.load(fh)
    os.unlink(out)
    n, steps = n_params(task, args.hidden), res["steps"]
    hosts = [f"host{r // k}" for r in range(p)]  # block placement, as `cluster run` places ranks
    rank_an = analytical_rank_bytes(res, mode, p, n)
    per_host = {h: 0.0 for h in dict.fromkeys(hosts)}
    per_host_an = dict(per_host)
    for r, h in enumerate(hosts):
        per_host[h] += res["bytes_sent"][r] / steps
        per_host_an[h] += rank_an[r] / steps
    row = {"layout": layout_, "task": task, "mode": mode, "straggle": straggle, "steps": steps,
           "bytes_per_host_step": per_host, "analytical_per_host_step": per_host_an,
           "median_step_s": res["step_time"][0].get("median_s"), "mean_step_s": res["step_time"][0].get("mean_s"),
           "final_accuracy": res["test_accuracy"],
           "time_to_target_s": None, "params_identical": res["params_identical"]}
    cross = cross_host_bytes(res, mode, hosts, n)
    if cross is not None:
        row["cross_host_analytical_per_step"] = {h: v / steps for h, v in cross.items()}
    if "ps" in res:
        row["clock_gap_max"] = res["ps"]["clock_gap_max"]
    if after:
        row["link_bytes_per_host_step"] = {h: (after[h] - before.get(h, 0)) / steps for h in after}
    row["seed"] = args.seed
    row["epochs_to_target"] = None
    elapsed, target = 0.0, args.target[task]
    for epoch, h in enumerate(res["history"], 1):
        elapsed += h["time_s"]
        if h["test_accuracy"] is not None and h["test_accuracy"] >= target:
            row["time_to_target_s"], row["epochs_to_target"] = elapsed, epoch
            break
    return row


def _median(values):
    """Median of the values that are not None (None when there are none); inf counts (a run that never reached)."""
    vals = [v for v in values if v is not None]
    return float(np.median(vals)) if vals else None


def seed_summary(rows: list) -> list:
    """Per (layout, task, mode, straggle) over seeds: median time and epochs to target, the medians of the median
    and mean step, and the median over seeds of the time ratio to BSP with the same servers (PS) or to the ring.

    A run that failed or never reached the target counts as an infinite time (so medians are not taken over the
    lucky seeds only); ``epochs_to_target`` lists one entry per seed, None where the target was not reached.
    """
    groups = {}
    for r in rows:
        groups.setdefault((r["layout"], r["task"], r["mode"], r["straggle"]), []).append(r)

    def ttt(r):
        return float("inf") if "failed" in r or r.get("time_to_target_s") is None else r["time_to_target_s"]

    by_seed = {(k, r.get("seed")): r for k, rs in groups.items() for r in rs}
    out = []
    for (lay, task, mode, slow), rs in groups.items():
        base = mode.split("-")[0] + "-bsp" if mode.startswith("ps") else "allreduce-ring"
        ratios = []
        for r in rs:
            b = by_seed.get(((lay, task, base, slow), r.get("seed")))
            if b is not None and ttt(b) != float("inf"):
                ratios.append(ttt(r) / ttt(b))
        times = [ttt(r) for r in rs]
        med = _median(times)
        ok = [r for r in rs if "failed" not in r]
        out.append({"layout": lay, "task": task, "mode": mode, "straggle": slow, "seeds": [r.get("seed") for r in rs],
                    "failed": len(rs) - len(ok), "reached": sum(t != float("inf") for t in times),
                    "median_time_to_target_s": None if med in (None, float("inf")) else med,
                    "epochs_to_target": [r.get("epochs_to_target") for r in rs],
                    "median_step_s": _median([r.get("median_step_s") for r in ok]),
                    "mean_step_s": _median([r.get("mean_step_s") for r in ok]),  # the median of the runs' means
                    "baseline": base, "ratio_to_baseline": ratios,
                    "median_ratio": _median(ratios)})
    return out


def fmt_summary(g: dict) -> str:
    def ms(v):
        return "-" if v is None else f"{1e3 * v:.1f}"

    med = "-" if g["median_time_to_target_s"] is None else f"{g['median_time_to_target_s']:.2f}"
    ratio = "-" if g["median_ratio"] is None else f"{g['median_ratio']:.2f}"
    epochs = ",".join("-" if e is None else str(e) for e in g["epochs_to_target"])
    return (f"| {g['layout']} | {g['task']} | {g['mode']}{' (straggler)' if g['straggle'] else ''} | "
            f"{g['reached']}/{len(g['seeds'])} | {med} | {epochs} | "
            f"{ms(g['median_step_s'])} | {ms(g['mean_step_s'])} | {ratio} (vs {g['baseline']}) |")


def fmt(row: dict, show_seed: bool = False) -> str:
    if "failed" in row:
        return (f"| {row['layout']} | {row['task']} | {row['mode']}{' (straggler)' if row['straggle'] else ''} | "
                f"failed: {row['failed']} |")

    def kb(d):
        return "/".join(f"{v / 1e3:.0f}" if np.isfinite(v) else "-" for v in d.values()) if d else "-"

    ttt = "-" if row["time_to_target_s"] is None else f"{row['time_to_target_s']:.1f}"
    step = "-" if row["median_step_s"] is None else f"{1e3 * row['median_step_s']:.1f}"
    mean = "-" if row["mean_step_s"] is None else f"{1e3 * row['mean_step_s']:.1f}"
    seed = f" (seed {row['seed']})" if show_seed else ""
    return (f"| {row['layout']} | {row['task']} | {row['mode']}{' (straggler)' if row['straggle'] else ''}{seed} | "
            f"{kb(row['bytes_per_host_step'])} | {kb(row['analytical_per_host_step'])} | "
            f"{kb(row.get('cross_host_analytical_per_step'))} | {kb(row.get('link_bytes_per_host_step'))} | "
            f"{step} | {mean} | {ttt} | "
            f"{100 * row['final_accuracy']:.2f}% |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--launcher", choices=("cluster", "mpiexec"), default="cluster")
    ap.add_argument("--name", default="psbench", help="emulated cluster name (cluster launcher)")
    ap.add_argument("--link", default="1gbit", help="link rate of every emulated host (cluster launcher)")
    ap.add_argument("--layouts", default="2x2,4x1", help="HOSTSxRANKS_PER_HOST, comma-separated")
    ap.add_argument("--tasks", default="digits,synthetic")
    ap.add_argument("--modes", default=",".join(MODES), help=f"subset of: {', '.join(MODES)}, and {', '.join(STRAGGLE_ONLY)} for the straggler runs "
                         "(in them by default)")
    ap.add_argument("--no-straggle", dest="straggle", action="store_false", help="skip the 5x straggler runs")
    ap.add_argument("--factor", type=float, default=5.0, help="slowdown of the last rank (default 5)")
    ap.add_argument("--straggle-spec", default=None,
                    help="a --straggle value instead of LAST_RANK:FACTOR, e.g. random:5:0.2 (transient delays)")
    ap.add_argument("--floor", type=float, default=0.01,
                    help="--compute-floor of every run (default 0.01 s: a digits step computes in ~1 ms, too little "
                         "for a 5x straggler to matter; 0 for the bare model)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--hidden", default="256")
    ap.add_argument("--target-digits", type=float, default=0.96)
    # measured here (p=2, ring, hidden 256, batch 64): 72.7% test accuracy after 3 epochs, 75.3% after 6
    ap.add_argument("--target-synthetic", type=float, default=0.70)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", default=None,
                    help="comma-separated seeds: every run once per seed, then a per-mode summary over seeds "
                         "(time to target is counted in whole epochs, so one seed can move it by an epoch)")
    ap.add_argument("--only-straggle", action="store_true", help="skip the runs without the straggler")
    ap.add_argument("--timeout", type=float, default=600, help="per run, seconds (a run past it is a failed row)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: digits, 1 epoch, hidden 32 (4x1 unless --layouts)")
    args = ap.parse_args(argv)
    if args.quick:
        args.tasks, args.epochs, args.hidden = "digits", 1, "32"
        if args.layouts == ap.get_default("layouts"):
            args.layouts = "4x1"
    args.target = {"digits": args.target_digits, "synthetic": args.target_synthetic}
    modes = [m for m in args.modes.split(",") if m]
    modes_given = args.modes != ap.get_default("modes")
    seeds = [int(v) for v in args.seeds.split(",")] if args.seeds else [args.seed]
    if args.only_straggle and not args.straggle:
        ap.error("--only-straggle with --no-straggle runs nothing")
    bad = [m for m in modes if m not in MODES and m not in STRAGGLE_ONLY]
    if bad:
        ap.error(f"unknown mode(s) {bad}; valid: {', '.join([*MODES, *STRAGGLE_ONLY])}")
    rows = []
    print("| layout | task | mode | B/host/step (kB, transport) | analytical | to other hosts, analytical | link "
          "| median step (ms) | mean step (ms) | time to target (s) | final accuracy |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for layout_ in args.layouts.split(","):
        hosts_n = int(layout_.split("x")[0])
        if args.launcher == "cluster":
            cluster(args, "up", "--hosts", str(hosts_n), "--link", args.link)
        try:
            for task in args.tasks.split(","):
                runs = [] if args.only_straggle else [(m, MODES[m], False) for m in modes if m in MODES]
                if args.straggle:
                    runs += [(m, MODES[m], True) for m in modes if m in MODES]
                    runs += [(m, f, True) for m, f in STRAGGLE_ONLY.items() if m in modes or not modes_given]
                for seed in seeds:  # seeds outermost: the modes of one seed run next to each other (interleaved)
                    args.seed = seed
                    for mode, flags, slow in runs:
                        try:
                            rows.append(run_one(args, layout_, task, mode, flags, slow))
                        except (RuntimeError, subprocess.TimeoutExpired) as e:  # a failed run is a row, not the end
                            why = str(e).strip().splitlines()
                            rows.append({"layout": layout_, "task": task, "mode": mode, "straggle": slow,
                                         "seed": seed, "failed": why[-1][:300] if why else type(e).__name__})
                        print(fmt(rows[-1], show_seed=len(seeds) > 1), flush=True)
        finally:
            if args.launcher == "cluster":
                cluster(args, "down")
    args.seed = seeds if len(seeds) > 1 else seeds[0]  # the settings record every seed
    summary = seed_summary(rows) if len(seeds) > 1 else None
    if summary:
        print("\n| layout | task | mode | reached | median time to target (s) | epochs to target, per seed "
              "| median step (ms) | mean step (ms) | median ratio over seeds |\n|---|---|---|---|---|---|---|---|---|")
        for g in summary:
            print(fmt_summary(g))
    if args.json:
        write_json(args.json, {"benchmark": "ps_compare", "argv": sys.argv, "settings": vars(args), "rows": rows,
                               "summary": summary, "load1_at_start": os.getloadavg()[0]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
