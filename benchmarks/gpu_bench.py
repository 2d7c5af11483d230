#!/usr/bin/env python3
"""GPU benchmarks for the day a GPU is lent (run by ``benchmarks/gpu_check.sh``): rows of JSON, one file each.

Sections (``--sections``, default all):

- ``kernels``: each device reduction kernel (``cupy``, ``numba_cuda``) summing float32 vs a device-to-device copy,
  1 MiB-1 GiB operands; GB/s on the bytes moved (reduce 3n, copy 2n), CUDA-event timed, median of repeats;
- ``staging``: host<->device copies from pageable vs pinned host memory, 1 MiB-256 MiB;
- ``allreduce``: (``mpiexec -n 2``, started by ``gpu_check.sh``) device arrays of every algorithm, staged through
  the host (the MPI wheel is not CUDA-aware), 1 MiB-64 MiB, interleaved with the native ``MPI_Allreduce`` on host
  copies;
- ``mlp``: one training step (forward + backward) of the 1024-1024-1024-10 MLP on the device with this package's
  model kernels vs torch (when installed), batch 512;
- ``codec``: the compression kernel sets' sign encode+decode throughput on the device.

``--dry-run`` prints what would run (no CuPy import, no GPU) and exits; it is what CI checks. Each section's
failure is a row with an ``error`` field, so one broken section does not hide the others.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

SECTIONS = ("kernels", "staging", "allreduce", "mlp", "codec")
MiB = 1 << 20


def sizes(lo: int, hi: int, factor: int = 4):
    out, n = [], lo
    while n <= hi:
        out.append(n)
        n *= factor
    return out


def plan(quick: bool) -> dict:
    """What each section measures (sizes in bytes), shared by the real run and ``--dry-run``."""
    top = 64 * MiB if quick else 1 << 30
    return {
        "kernels": {"kernels": ["cupy", "numba_cuda"], "bytes": sizes(MiB, top)},
        "staging": {"bytes": sizes(MiB, min(top, 256 * MiB))},
        "allreduce": {"algorithms": "every registered + auto", "bytes": sizes(MiB, 64 * MiB), "ranks": 2},
        "mlp": {"sizes": [1024, 1024, 1024, 10], "batch": 512, "peers": ["ring_allreduce cupy", "torch"]},
        "codec": {"bytes": sizes(MiB, min(top, 256 * MiB))},
    }


def _timer(cupy, fn, repeats: int) -> float:
    """Median seconds of ``fn()`` by CUDA events (one warm-up call)."""
    fn()
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop) / 1e3)
    times.sort()
    return times[len(times) // 2]


def bench_kernels(cfg, repeats):
    import cupy

    from ring_allreduce import kernels

    rows = []
    for nbytes in cfg["bytes"]:
        n = nbytes // 4
        a, b = cupy.ones(n, cupy.float32), cupy.ones(n, cupy.float32)
        out = cupy.empty_like(a)
        t_copy = _timer(cupy, lambda: cupy.copyto(out, a), repeats)
        rows.append({"section": "kernels", "kernel": "device copy", "bytes": nbytes, "GBps": 2 * nbytes / t_copy / 1e9})
        for name in cfg["kernels"]:
            k = kernels.get(name)
            t = _timer(cupy, lambda: k.reduce(a, b, out, "sum"), repeats)
            rows.append({"section": "kernels", "kernel": name, "bytes": nbytes, "GBps": 3 * nbytes / t / 1e9,
                         "vs_copy": (3 * nbytes / t) / (2 * nbytes / t_copy)})
        del a, b, out
        cupy.get_default_memory_pool().free_all_blocks()
    return rows


def bench_staging(cfg, repeats):
    import cupy
    import numpy as np

    rows = []
    for nbytes in cfg["bytes"]:
        n = nbytes // 4
        dev = cupy.empty(n, cupy.float32)
        pageable = np.ones(n, np.float32)
        mem = cupy.cuda.alloc_pinned_memory(nbytes)
        pinned = np.frombuffer(mem, np.float32, n)
        pinned[...] = 1
        for kind, host in (("pageable", pageable), ("pinned", pinned)):
            t_h2d = _timer(cupy, lambda: dev.set(host), repeats)
            t_d2h = _timer(cupy, lambda: dev.get(out=host), repeats)
            rows.append({"section": "staging", "host": kind, "bytes": nbytes, "h2d_GBps": nbytes / t_h2d / 1e9,
                         "d2h_GBps": nbytes / t_d2h / 1e9})
    return rows


def bench_allreduce(cfg, repeats):
    """Under mpiexec: every algorithm on CuPy arrays (staged), interleaved with native MPI on host copies."""
    import cupy
    import numpy as np
    from mpi4py import MPI

    import ring_allreduce as ra
    from ring_allreduce import algorithms

    comm = MPI.COMM_WORLD
    names = algorithms.names() + ["auto"]
    rows = []
    for nbytes in cfg["bytes"]:
        n = nbytes // 4
        x = cupy.ones(n, cupy.float32)
        out = cupy.empty_like(x)
        host, hout = np.ones(n, np.float32), np.empty(n, np.float32)
        calls = {name: (lambda name=name: ra.allreduce(x, comm, algorithm=name, out=out)) for name in names}
        calls["native (host)"] = lambda: comm.Allreduce(host, hout, MPI.SUM)
        times = {k: [] for k in calls}
        for _ in range(repeats):
            for name, fn in calls.items():  # interleaved: every algorithm sees the same machine state
                comm.Barrier()
                t0 = time.perf_counter()
                fn()
                cupy.cuda.get_current_stream().synchronize()
                times[name].append(comm.allreduce(time.perf_counter() - t0, op=MPI.MAX))
        for name, ts in times.items():
            ts.sort()
            t = ts[len(ts) // 2]
            rows.append({"section": "allreduce", "algorithm": name, "bytes": nbytes, "p": comm.size,
                         "time_us": t * 1e6, "busbw_GBps": 2 * (comm.size - 1) / comm.size * nbytes / t / 1e9})
    return rows if comm.rank == 0 else []


def bench_mlp(cfg, repeats):
    import cupy
    import numpy as np

    from ring_allreduce.train import model_kernels, models

    sizes_, batch = cfg["sizes"], cfg["batch"]
    rows = []
    net = models.Network(sizes_, "xent", kernel=model_kernels.get("cupy"), dtype=np.float32)
    params = cupy.asarray(net.init(0))
    grad = cupy.empty_like(params)
    X = cupy.random.standard_normal((batch, sizes_[0]), dtype=cupy.float32)
    y = cupy.random.randint(0, sizes_[-1], batch).astype(cupy.int64)
    t = _timer(cupy, lambda: net.loss_and_grad(params, X, y, grad, 1.0 / batch), repeats)
    rows.append({"section": "mlp", "impl": "ring_allreduce (cupy kernels)", "step_ms": t * 1e3,
                 "samples_per_s": batch / t})
    try:
        import torch
    except ImportError:
        rows.append({"section": "mlp", "impl": "torch", "error": "torch not installed"})
        return rows
    layers = []
    for i in range(len(sizes_) - 1):
        layers.append(torch.nn.Linear(sizes_[i], sizes_[i + 1]))
        if i < len(sizes_) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers).cuda()
    tx = torch.randn(batch, sizes_[0], device="cuda")
    ty = torch.randint(0, sizes_[-1], (batch,), device="cuda")

    def step():
        model.zero_grad(set_to_none=False)
        torch.nn.functional.cross_entropy(model(tx), ty).backward()
    t = _timer(cupy, step, repeats)
    rows.append({"section": "mlp", "impl": f"torch {torch.__version__}", "step_ms": t * 1e3,
                 "samples_per_s": batch / t})
    return rows


def bench_codec(cfg, repeats):
    import cupy

    from ring_allreduce.compression import kernels as kernel_sets

    rows = []
    for set_name in ("cupy", "numba_cuda"):
        try:
            ks = kernel_sets.get(set_name)
        except Exception as e:  # noqa: BLE001 - a set that cannot build is a row, not a crash
            rows.append({"section": "codec", "kernels": set_name, "error": f"{type(e).__name__}: {e}"})
            continue
        for nbytes in cfg["bytes"]:
            n = nbytes // 4
            x = cupy.random.standard_normal(n, dtype=cupy.float32)
            out = cupy.zeros(n, cupy.float32)

            def round_trip():
                bits, scale = ks.sign_encode(x)
                ks.sign_decode(bits, n, scale, out, True)
            t = _timer(cupy, round_trip, repeats)
            rows.append({"section": "codec", "kernels": set_name, "codec": "sign", "bytes": nbytes,
                         "GBps": nbytes / t / 1e9})
    return rows


def plot_rows(path: str, rows, series: str, y: str, title: str) -> bool:
    """A log-x PNG of ``y`` against bytes, one line per ``series`` value; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in sorted({r[series] for r in rows if y in r}):
        pts = sorted((r["bytes"], r[y]) for r in rows if r.get(series) == name and y in r)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bytes")
    ax.set_ylabel(y)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


#: section -> (series field, y field) of its plot
PLOTS = {"kernels": ("kernel", "GBps"), "staging": ("host", "h2d_GBps"), "allreduce": ("algorithm", "busbw_GBps"),
         "codec": ("kernels", "GBps")}

RUNNERS = {"kernels": bench_kernels, "staging": bench_staging, "allreduce": bench_allreduce, "mlp": bench_mlp,
           "codec": bench_codec}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated: {', '.join(SECTIONS)}")
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="directory for <section>.json (default $OUT)")
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--quick", action="store_true", help="sizes up to 64 MiB (a smoke run)")
    ap.add_argument("--dry-run", action="store_true", help="print what would run; import no GPU library")
    args = ap.parse_args(argv)
    chosen = [s for s in args.sections.split(",") if s]
    bad = sorted(set(chosen) - set(SECTIONS))
    if bad:
        ap.error(f"unknown section(s) {bad}; valid: {', '.join(SECTIONS)}")
    cfgs = plan(args.quick)
    if args.dry_run:
        print(json.dumps({s: cfgs[s] for s in chosen}, indent=1))
        return 0
    from ring_allreduce._io import write_json

    status = 0
    for s in chosen:
        t0 = time.time()
        try:
            rows = RUNNERS[s](cfgs[s], args.repeats)
        except Exception as e:  # noqa: BLE001 - report and go on to the next section
            rows, status = [{"section": s, "error": f"{type(e).__name__}: {e}"}], 1
        if rows:
            meta = {"python": platform.python_version(), "seconds": round(time.time() - t0, 1),
                    "argv": sys.argv}
            write_json(os.path.join(args.out, f"gpu_{s}.json"), {"meta": meta, "rows": rows})
            if s in PLOTS and not any("error" in r for r in rows):
                plot_rows(os.path.join(args.out, f"gpu_{s}.png"), rows, *PLOTS[s], title=f"GPU {s}")
            print(f"[gpu_bench] {s}: {len(rows)} rows in {meta['seconds']} s", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
