#!/usr/bin/env python3
"""Benchmark the shared-memory and hierarchical AllReduce paths against native ``MPI.Allreduce`` and the ring.

Rows (one per path and size): ``mpi_inplace`` (native, in place: the baseline), ``mpi`` (native, out of place),
``shm_resident`` (buffers from ``shared_empty``, in place), ``shm_resident_out`` (resident into a resident out),
``shm_copyin`` (ordinary arrays through algorithm="shm"), ``ring`` (hand-written flat ring),
``hierarchical`` (ordinary arrays, ``--layout`` pretend nodes), ``hierarchical_resident``, and any other
registered algorithm name (ordinary arrays, in place).

Timing: in every repeat each path takes its turn (interleaved, so a shared machine's background load hits all
paths alike): ``Barrier``, then ``--iters`` back-to-back calls; the repeat's time per call is the slowest rank's
(MAX over ranks); the row reports the median (and min) over ``--repeats`` after one warm-up repeat.
``busbw = algbw * 2(p-1)/p`` (nccl-tests' convention), ``algbw = bytes / time``. The agreement check is off
(``check=False``), as for every benchmark. Results go to ``--json`` (atomic write) and a table on rank 0.

    mpiexec -n 2 python benchmarks/shm.py --sizes 4,16,64
    mpiexec -n 4 python benchmarks/shm.py --layout 2x2 --paths mpi_inplace,ring,hierarchical,hierarchical_resident
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

from ring_allreduce._io import write_json

PATHS = ("mpi_inplace", "mpi", "shm_resident", "shm_resident_out", "shm_copyin", "ring", "hierarchical",
         "hierarchical_resident")


def make_call(comm, path, n, dtype):
    """Return ``(call, reset, free)`` for one path on ``n`` elements: the timed call, the refill, the cleanup."""
    from mpi4py import MPI

    from ring_allreduce import allreduce, shm

    x = np.full(n, 1e-3, dtype=dtype)
    a = b = None
    if path in ("shm_resident", "shm_resident_out", "hierarchical_resident"):
        a = shm.shared_empty(n, dtype, comm)
        if path == "shm_resident_out":
            b = shm.shared_empty(n, dtype, comm)
            b.fill(0)
    out = np.empty_like(x)
    out.fill(0)
    Allreduce = comm.Allreduce
    calls = {
        "mpi_inplace": lambda: Allreduce(MPI.IN_PLACE, x),
        "mpi": lambda: Allreduce(x, out),
        "shm_resident": lambda: allreduce(a, comm, out=a, algorithm="shm", check=False),
        "shm_resident_out": lambda: allreduce(a, comm, out=b, algorithm="shm", check=False),
        "shm_copyin": lambda: allreduce(x, comm, out=x, algorithm="shm", check=False),
        "ring": lambda: allreduce(x, comm, out=x, algorithm="ring", check=False),
        "hierarchical": lambda: allreduce(x, comm, out=x, algorithm="hierarchical", check=False),
        "hierarchical_resident": lambda: allreduce(a, comm, out=a, algorithm="hierarchical", check=False),
    }
    from ring_allreduce import algorithm_names

    if path not in calls and path in algorithm_names():  # any registered algorithm on ordinary arrays
        calls[path] = lambda: allreduce(x, comm, out=x, algorithm=path, check=False)
    if path not in calls:
        raise SystemExit(f"unknown path {path!r}; valid: {', '.join(PATHS)} or an algorithm name")

    def reset():  # refill outside the timed region so repeated in-place sums stay finite
        x.fill(1e-3)
        if a is not None:
            a.fill(1e-3)

    def free():
        for arr in (a, b):
            if arr is not None:
                arr.free()

    return calls[path], reset, free


def time_paths(comm, paths, n, dtype, iters, repeats):
    """Per-call seconds (slowest rank) of each repeat, per path; the paths take turns inside every repeat.

    Interleaving puts every path under the same background load (this machine is shared), so the ratios are
    fairer than timing one path after the other; repeat 0 is a warm-up (window creation, first touch).
    """
    from mpi4py import MPI

    setups = {path: make_call(comm, path, n, dtype) for path in paths}
    times = {path: [] for path in paths}
    t = np.zeros(1)
    wtime = MPI.Wtime
    for rep in range(repeats + 1):
        for path in paths:
            call, reset, _ = setups[path]
            reset()
            comm.Barrier()
            t0 = wtime()
            for _ in range(iters):
                call()
            t[0] = (wtime() - t0) / iters
            comm.Allreduce(MPI.IN_PLACE, t, MPI.MAX)
            if rep:
                times[path].append(float(t[0]))
    for _, _, free in setups.values():
        free()
    return times




def merge_trainer(args):
    """Summarize interleaved trainer runs with and without ``--shared-buckets`` (median samples/s, pair ratios)."""
    import glob

    runs = {}
    for kind in ("plain", "shared"):
        for path in sorted(glob.glob(os.path.join(args.merge_trainer, f"{kind}_*.json"))):
            with open(path) as fh:
                d = json.load(fh)
            runs.setdefault(kind, {})[os.path.basename(path).split("_", 1)[1]] = d
    pairs = sorted(set(runs.get("plain", {})) & set(runs.get("shared", {})))
    if not pairs:
        raise SystemExit(f"no plain_*/shared_* pairs in {args.merge_trainer}")
    sps = {k: [runs[k][i]["samples_per_s"] for i in pairs] for k in ("plain", "shared")}
    comm = {k: [runs[k][i].get("comm_fraction") for i in pairs] for k in ("plain", "shared")}
    comm_s = {k: [runs[k][i].get("phase_seconds", {}).get("comm") for i in pairs] for k in ("plain", "shared")}
    ratios = [s_ / p_ for s_, p_ in zip(sps["shared"], sps["plain"])]
    # the compute phase is the same work in both runs of a pair: when it differs by more than 25%, background
    # load hit one run and not the other, so that pair says nothing about communication
    compute = {k: [runs[k][i].get("phase_seconds", {}).get("compute") for i in pairs] for k in ("plain", "shared")}
    clean = [j for j, (a, b) in enumerate(zip(compute["plain"], compute["shared"]))
             if a and b and 0.8 <= b / a <= 1.25]
    row = {"path": "trainer", "pairs": len(pairs), "samples_per_s_plain": sps["plain"],
           "samples_per_s_shared": sps["shared"], "median_plain": statistics.median(sps["plain"]),
           "median_shared": statistics.median(sps["shared"]), "median_pair_ratio": statistics.median(ratios),
           "comm_fraction_plain": comm["plain"], "comm_fraction_shared": comm["shared"],
           "comm_seconds_plain": comm_s["plain"], "comm_seconds_shared": comm_s["shared"],
           "load_note": "pairs run only when the 1-min load was < 2.5; other agents share the 2 cores",
           "clean_pairs": [pairs[j] for j in clean],
           "clean_median_pair_ratio": statistics.median([ratios[j] for j in clean]) if clean else None,
           "clean_median_comm_seconds_plain": statistics.median([comm_s["plain"][j] for j in clean]) if clean else None,
           "clean_median_comm_seconds_shared": (statistics.median([comm_s["shared"][j] for j in clean])
                                                if clean else None),
           "params_identical": all(runs[k][i].get("params_identical") for k in runs for i in pairs),
           "config": runs["shared"][pairs[0]].get("config")}
    print(json.dumps({k: v for k, v in row.items() if k != "config"}, indent=1))
    if args.json:
        doc = {"runs": []}
        if os.path.exists(args.json):
            with open(args.json) as fh:
                doc = json.load(fh)
        meta = {"label": args.label or "trainer", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "command": "python benchmarks/shm.py --merge-trainer %s" % args.merge_trainer}
        doc.setdefault("runs", []).append({"meta": meta, "rows": [row]})
        write_json(args.json, doc)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="4,16,64", help="MiB per rank, comma-separated")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--paths", default="mpi_inplace,mpi,shm_resident,shm_resident_out,shm_copyin,ring")
    ap.add_argument("--layout", default=None, help="pretend nodes for the hierarchical rows, e.g. 2x2")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", default=None, help="merge the rows into this JSON file (default: print only)")
    ap.add_argument("--label", default=None, help="free-form tag stored with the rows")
    ap.add_argument("--merge-trainer", metavar="DIR", default=None,
                    help="no MPI: merge trainer results DIR/plain_*.json and DIR/shared_*.json (pairs from "
                         "`ring-allreduce train ... [--shared-buckets] --json`) into --json as samples/s rows")
    args = ap.parse_args(argv)
    if args.merge_trainer:
        return merge_trainer(args)

    import mpi4py

    from mpi4py import MPI

    from ring_allreduce import shm

    comm = MPI.COMM_WORLD
    p, rank = comm.Get_size(), comm.Get_rank()
    if args.layout:
        os.environ[shm.ENV_PRETEND] = args.layout
    dtype = np.dtype(args.dtype)
    paths = [s for s in args.paths.split(",") if s]
    rows = []
    load = os.getloadavg()[0]
    for mib in [float(s) for s in args.sizes.split(",") if s]:
        n = int(mib * 2 ** 20) // dtype.itemsize
        nbytes = n * dtype.itemsize
        times_by_path = time_paths(comm, paths, n, dtype, args.iters, args.repeats)
        base = None
        if "mpi_inplace" in times_by_path:
            base = nbytes / statistics.median(times_by_path["mpi_inplace"]) * 2 * (p - 1) / p / 1e9
        for path in paths:
            times = times_by_path[path]
            med = statistics.median(times)
            busbw = nbytes / med * 2 * (p - 1) / p / 1e9
            row = {"path": path, "p": p, "dtype": str(dtype), "bytes": nbytes, "median_s": med, "min_s": min(times),
                   "busbw_GBps": busbw, "busbw_best_GBps": nbytes / min(times) * 2 * (p - 1) / p / 1e9,
                   "layout": args.layout if path.startswith("hierarchical") else None}
            row["x_mpi_inplace"] = busbw / base if base else None
            rows.append(row)
            if rank == 0:
                ratio = f"{row['x_mpi_inplace']:.2f}x" if base else "-"
                print(f"{path:22s} p={p} {mib:6.1f} MiB  {med * 1e3:9.3f} ms  busbw {busbw:6.2f} GB/s  {ratio}",
                      flush=True)
    if rank == 0:
        meta = {"command": "mpiexec -n %d python %s" % (p, " ".join([sys.argv[0]] + (argv or sys.argv[1:]))),
                "mpi": MPI.Get_library_version().splitlines()[0].strip(),
                "thread_level": {MPI.THREAD_SINGLE: "single", MPI.THREAD_FUNNELED: "funneled",
                                 MPI.THREAD_SERIALIZED: "serialized", MPI.THREAD_MULTIPLE: "multiple"}[
                                     MPI.Query_thread()],
                "mpi4py": mpi4py.__version__, "numpy": np.__version__, "load_1min_before": load,
                "load_1min_after": os.getloadavg()[0], "cpus": os.cpu_count(), "iters": args.iters,
                "repeats": args.repeats, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "label": args.label}
        if args.json:
            doc = {"runs": []}
            if os.path.exists(args.json):
                with open(args.json) as fh:
                    doc = json.load(fh)
            doc.setdefault("runs", []).append({"meta": meta, "rows": rows})
            write_json(args.json, doc)
        print(json.dumps(meta))
    shm.release(comm)


if __name__ == "__main__":
    main()
