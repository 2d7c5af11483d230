#!/usr/bin/env python3
"""Measure the reduction kernels' bandwidth against a plain copy (issue 3: "the reduction kernel moves its bytes
at least as fast as a plain copy does on this machine, and avg's scaling is fused").

GB/s counts the bytes a kernel must move: a reduce reads ``a`` and ``b`` and writes ``out`` (3n bytes), a copy
reads and writes (2n bytes). NumPy's ``add+divide`` makes two passes, so it moves 5n bytes for the same 3n of
useful traffic: it is reported on the 3n basis, which is what the fused kernel is compared on.

Each row is the median (and min) over ``--repeats`` samples; a sample times enough calls to last ~2 ms, and the
cases take turns within each repeat. Numba kernels are warmed up (compiled or loaded from the cache) before
timing. No MPI: one process; "default threads" means all CPUs this process may use.

Usage: python benchmarks/kernels.py [--minbytes 4K] [--maxbytes 64M] [--threads 1,default] [--json PATH]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

from ring_allreduce._io import write_json

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_JSON = os.path.join(HERE, "results", "kernels.json")


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().rstrip("B").rstrip("I")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1:] in units else int(text)


def _calls_per_sample(fn) -> int:
    """Warm ``fn`` up (compiles Numba kernels) and return how many calls last ~2 ms."""
    fn()
    t0 = time.perf_counter()
    fn()
    return max(1, int(2e-3 / max(time.perf_counter() - t0, 1e-7)))


def cases(thread_configs):
    """Yield (name, threads, factory(a, b, out) -> zero-argument callable, bytes-moved factor)."""
    from ring_allreduce.kernels.numpy_kernels import NumpyKernel

    npk = NumpyKernel()
    yield "copy (np.copyto)", 1, lambda a, b, o: (lambda: np.copyto(o, a)), 2
    yield "numpy add", 1, lambda a, b, o: (lambda: np.add(a, b, out=o)), 3
    yield "numpy add, out=b", 1, lambda a, b, o: (lambda: np.add(a, b, out=b)), 3
    yield "numpy add+divide (2 passes)", 1, lambda a, b, o: (lambda: npk.reduce(a, b, o, "sum", 2)), 3
    yield "numpy add+divide, out=b (2 passes)", 1, lambda a, b, o: (lambda: npk.reduce(a, b, b, "sum", 2)), 3
    try:
        from ring_allreduce.kernels.numba_cpu import NumbaCpuKernel
    except ImportError:
        return
    for label, threads in thread_configs:
        # with threads, take the threaded path at every size, to show where it pays off
        nk = NumbaCpuKernel(threads=threads, parallel_min_bytes=0 if threads > 1 else None)
        yield f"numba add ({label})", threads, lambda a, b, o, k=nk: (lambda: k.reduce(a, b, o, "sum")), 3
        yield f"numba add, out=b ({label})", threads, lambda a, b, o, k=nk: (lambda: k.reduce(a, b, b, "sum")), 3
        yield (f"numba add+divide fused ({label})", threads,
               lambda a, b, o, k=nk: (lambda: k.reduce(a, b, o, "sum", 2)), 3)
        yield (f"numba add+divide fused, out=b ({label})", threads,
               lambda a, b, o, k=nk: (lambda: k.reduce(a, b, b, "sum", 2)), 3)


def measure(sizes, thread_configs, dtype, repeats):
    """Return one row per (case, size): median and min over ``repeats`` samples of ~2 ms.

    The cases take turns within each repeat, so a burst of load from other processes hits all of them alike.
    """
    rows = []
    all_cases = list(cases(thread_configs))
    for size in sizes:
        n = size // np.dtype(dtype).itemsize
        rng = np.random.default_rng(n)
        a = rng.standard_normal(n).astype(dtype)
        b = rng.standard_normal(n).astype(dtype)
        out = np.empty_like(a)
        # out=b cases get their own b (add grows it, add+divide pulls it towards a: no overflow, no subnormals)
        fns = [make(a, b.copy() if "out=b" in name else b, out) for name, _, make, _ in all_cases]
        calls = [_calls_per_sample(fn) for fn in fns]
        samples = [[] for _ in fns]
        for _ in range(repeats):
            for i, fn in enumerate(fns):
                t0 = time.perf_counter()
                for _ in range(calls[i]):
                    fn()
                samples[i].append((time.perf_counter() - t0) / calls[i])
        for (name, threads, _, factor), ts in zip(all_cases, samples):
            med = float(np.median(ts))
            rows.append({"kernel": name, "threads": threads, "dtype": str(np.dtype(dtype)), "size_bytes": size,
                         "count": n, "bytes_moved": factor * size, "time_us": med * 1e6,
                         "time_us_min": min(ts) * 1e6, "GBps": factor * size / med / 1e9,
                         "GBps_best": factor * size / min(ts) / 1e9})
    copy = {r["size_bytes"]: r["GBps"] for r in rows if r["kernel"].startswith("copy")}
    for r in rows:
        r["vs_copy"] = r["GBps"] / copy[r["size_bytes"]]
    return rows


def table(rows) -> str:
    sizes = sorted({r["size_bytes"] for r in rows})
    names = list(dict.fromkeys(r["kernel"] for r in rows))
    cell = {(r["kernel"], r["size_bytes"]): r for r in rows}
    head = f"{'kernel (GB/s of bytes moved, x copy)':46s}" + "".join(f"{_fmt_size(s):>14s}" for s in sizes)
    lines = [head, "-" * len(head)]
    for name in names:
        parts = []
        for s in sizes:
            r = cell.get((name, s))
            parts.append(f"{r['GBps']:7.1f} {r['vs_copy']:4.2f}x" if r else " " * 14)
        lines.append(f"{name:46s}" + "".join(f"{p:>14s}" for p in parts))
    return "\n".join(lines)


def _fmt_size(s: int) -> str:
    return f"{s >> 20} MiB" if s >= 1 << 20 else f"{s >> 10} KiB"


def meta(args, thread_configs) -> dict:
    info = {"command": " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]), "python": platform.python_version(),
            "numpy": np.__version__, "machine": platform.machine(), "cpus": os.cpu_count(),
            "loadavg_1min": os.getloadavg()[0], "dtype": args.dtype, "repeats": args.repeats,
            "thread_configs": [{"label": lbl, "threads": t} for lbl, t in thread_configs],
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        import numba

        info["numba"] = numba.__version__
        info["numba_threading_layer_max_threads"] = numba.config.NUMBA_NUM_THREADS
    except ImportError:
        info["numba"] = None
    return info




def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-b", "--minbytes", default="4K", help="smallest operand size (default 4K)")
    ap.add_argument("-e", "--maxbytes", default="64M", help="largest operand size (default 64M)")
    ap.add_argument("-f", "--stepfactor", type=int, default=4)
    ap.add_argument("-d", "--dtype", default="float32")
    ap.add_argument("-r", "--repeats", type=int, default=21, help="samples per row; the median is reported")
    ap.add_argument("--threads", default="1,default",
                    help="Numba thread counts to measure: integers or 'default' (all CPUs), comma-separated")
    ap.add_argument("--json", default=DEFAULT_JSON, help=f"write rows here (default {DEFAULT_JSON}; '' to skip)")
    args = ap.parse_args(argv)
    sizes = []
    s = parse_size(args.minbytes)
    while s <= parse_size(args.maxbytes):
        sizes.append(s)
        s *= args.stepfactor
    from ring_allreduce.kernels.numba_cpu import cpu_count

    thread_configs = []
    for t in args.threads.split(","):
        thread_configs.append(("default threads", cpu_count()) if t == "default" else (f"{int(t)} thread", int(t)))
    rows = measure(sizes, thread_configs, args.dtype, args.repeats)
    doc = {"meta": meta(args, thread_configs), "rows": rows}
    print(f"# {doc['meta']['command']}  (dtype {args.dtype}, median of {args.repeats}, "
          f"load {doc['meta']['loadavg_1min']:.2f}, numba {doc['meta'].get('numba')})")
    print(table(rows))
    if args.json:
        write_json(args.json, doc)
        print(f"# wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
