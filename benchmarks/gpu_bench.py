#!/usr/bin/env python3
"""GPU benchmarks for the day a GPU is lent (run by ``benchmarks/gpu_check.sh``): rows of JSON, one file each.

Sections (``--sections``, default all):

- ``kernels``: each device reduction kernel (``cupy``: a vectorized RawKernel for float32/float16 sum and avg,
  ``numba_cuda``) for float32 and float16, ``sum`` and fused ``avg`` (sum then divide in one pass), 1 MiB-1 GiB
  operands, next to a device-to-device copy of the same operand (``cupy.copyto``: the memory-bound reference);
  GB/s counts every byte read and written (reduce 3n, copy 2n);
  CUDA-event timed, median of repeats;
- ``staging``: host<->device copies from pageable vs pinned host memory, 1 MiB-256 MiB;
- ``allreduce``: (``mpiexec -n 2``, ranks sharing the GPU) CuPy and Numba-CUDA arrays through every algorithm:
  first checked (bit for bit against the same algorithm on host copies, identical on every rank), then timed
  one-shot and as a persistent plan, next to the same algorithm on host arrays, native ``MPI_Allreduce`` on host
  arrays and the pinned device->host->device copy of the same bytes (the staging's physical cost), interleaved;
- ``mlp``: one training step (forward, backward, SGD-momentum update) of the 1024-1024-1024-10 MLP (2.1 M
  parameters) at batch 512 with this package's CuPy kernels vs torch on the same GPU, with a breakdown by kernel;
- ``codec``: the compression kernel sets' encode+decode throughput on the device (sign, int8, QSGD, top-k), and
  PowerSGD's steps (the package's PowerSGD runs on the host; its device cost is measured with CuPy's matmul/QR).

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
import traceback

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
        "kernels": {"kernels": ["cupy", "numba_cuda"], "dtypes": ["float32", "float16"], "ops": ["sum", "avg"],
                    "bytes": sizes(MiB, top)},
        "staging": {"bytes": sizes(MiB, min(top, 256 * MiB))},
        "allreduce": {"backends": ["cupy", "numba_cuda"], "algorithms": "every registered + auto",
                      "bytes": sizes(MiB, 64 * MiB), "ranks": 2},
        "mlp": {"sizes": [1024, 1024, 1024, 10], "batch": 512, "peers": ["ring_allreduce cupy", "torch"]},
        "codec": {"kernels": ["cupy", "numba_cuda"], "codecs": ["sign", "int8", "qsgd", "topk"],
                  "bytes": sizes(MiB, min(top, 256 * MiB)), "powersgd": {"shapes": [[1024, 1024], [4096, 4096]],
                                                                        "rank": 4}},
    }


def median(ts):
    ts = sorted(ts)
    return ts[len(ts) // 2]


def _timer(cupy, fn, repeats: int) -> float:
    """Median seconds of ``fn()`` by CUDA events on the current stream (one warm-up call)."""
    fn()
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop) / 1e3)
    return median(times)


def _free(cupy):
    cupy.cuda.Device().synchronize()
    cupy.get_default_memory_pool().free_all_blocks()


# -- kernels ------------------------------------------------------------------------------------------------------
def bench_kernels(cfg, repeats):
    import cupy
    import numpy as np

    from ring_allreduce import kernels

    rows = []
    impls = {}
    for name in cfg["kernels"]:
        try:
            impls[name] = kernels.get(name)
        except Exception as e:  # noqa: BLE001 - a kernel that cannot build is a row, not a crash
            rows.append({"section": "kernels", "kernel": name, "error": f"{type(e).__name__}: {e}"})
    for nbytes in cfg["bytes"]:
        for dtype in cfg["dtypes"]:
            n = nbytes // np.dtype(dtype).itemsize
            a = cupy.random.standard_normal(n, dtype=cupy.float32).astype(dtype)
            b = cupy.random.standard_normal(n, dtype=cupy.float32).astype(dtype)
            out = cupy.empty_like(a)
            t_copy = _timer(cupy, lambda: cupy.copyto(out, a), repeats)
            copy_rate = 2 * nbytes / t_copy
            rows.append({"section": "kernels", "kernel": "device copy", "dtype": dtype, "op": "copy",
                         "series": f"device copy {dtype}", "bytes": nbytes, "GBps": copy_rate / 1e9})
            for name, k in impls.items():
                if name == "numba_cuda":
                    from numba import cuda

                    args = (cuda.as_cuda_array(a), cuda.as_cuda_array(b), cuda.as_cuda_array(out))
                else:
                    args = (a, b, out)
                for op in cfg["ops"]:
                    div = 2 if op == "avg" else None  # avg at p = 2: the fused last pass of the allreduce
                    t = _timer(cupy, lambda: k.reduce(*args, "sum", div), repeats)
                    rate = 3 * nbytes / t
                    rows.append({"section": "kernels", "kernel": name, "dtype": dtype, "op": op,
                                 "series": f"{name} {op} {dtype}", "bytes": nbytes, "GBps": rate / 1e9,
                                 "vs_copy": rate / copy_rate})
            del a, b, out
            _free(cupy)
    if "cupy" in impls:
        from ring_allreduce.kernels import cupy_kernels

        built = {c: (v if isinstance(v, str) else "built") for c, v in cupy_kernels.VECTOR_KERNELS.items()}
        rows.append({"section": "kernels", "kernel": "cupy", "vector_kernels": built})
    return rows


# -- staging ------------------------------------------------------------------------------------------------------
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
        del dev, mem
        _free(cupy)
    return rows


# -- allreduce (under mpiexec) ------------------------------------------------------------------------------------
def _backend_ops(name):
    """(to_device, to_host, synchronize) of a device backend."""
    if name == "cupy":
        import cupy

        return cupy.asarray, cupy.asnumpy, lambda: cupy.cuda.get_current_stream().synchronize()
    from numba import cuda

    return cuda.to_device, lambda d: d.copy_to_host(), cuda.synchronize


def check_allreduce(comm, backend, names, n=(1 << 18) + 3):
    """Rows saying, per algorithm, whether device arrays reduce bit for bit as host arrays do, on every rank."""
    import numpy as np

    import ring_allreduce as ra

    to_device, to_host, _ = _backend_ops(backend)
    rng = np.random.default_rng([7, comm.rank])
    rows = []
    for name in names:
        for dtype, op in (("float32", "sum"), ("float32", "avg"), ("int64", "sum")):
            x = (rng.standard_normal(n) * 100).astype(dtype)
            ref = ra.allreduce(x.copy(), comm, op=op, algorithm=name)
            one = to_host(ra.allreduce(to_device(x), comm, op=op, algorithm=name))
            with ra.allreduce_init(to_device(x), comm, op=op, algorithm=name) as p:
                planned = to_host(p())
            same = bool(np.array_equal(one, ref) and np.array_equal(planned, ref))
            digests = comm.allgather(one.tobytes())
            identical = all(d == digests[0] for d in digests)
            rows.append({"section": "allreduce_check", "backend": backend, "algorithm": name, "dtype": dtype,
                         "op": op, "count": n, "p": comm.size,
                         "equals_host_run": bool(all(comm.allgather(same))), "identical_on_all_ranks": identical})
    return rows


def bench_allreduce(cfg, repeats):
    """Under mpiexec: each backend's device arrays through every algorithm, checked, then timed interleaved."""
    import numpy as np
    from mpi4py import MPI

    import ring_allreduce as ra
    from ring_allreduce import algorithms, backends

    comm = MPI.COMM_WORLD
    names = algorithms.names() + ["auto"]
    rows = []
    for backend in cfg["backends"]:
        try:
            to_device, _, sync = _backend_ops(backend)
            rows += check_allreduce(comm, backend, names)
        except Exception as e:  # noqa: BLE001 - a backend that cannot run is a row; the other one still runs
            rows.append({"section": "allreduce", "backend": backend, "error": f"{type(e).__name__}: {e}"})
            continue
        for nbytes in cfg["bytes"]:
            n = nbytes // 4
            x = to_device(np.ones(n, np.float32))
            out = to_device(np.empty(n, np.float32))
            host, hout = np.ones(n, np.float32), np.empty(n, np.float32)
            pinned = backends.host_buffer(backend, (n,), np.float32)
            plans = {name: ra.allreduce_init(x, comm, algorithm=name, out=out) for name in names}
            calls = {}
            for name in names:
                calls[("device one-shot", name)] = lambda name=name: ra.allreduce(x, comm, algorithm=name, out=out)
                calls[("device plan", name)] = plans[name]
                calls[("host", name)] = lambda name=name: ra.allreduce(host, comm, algorithm=name, out=hout)
            calls[("host", "native MPI_Allreduce")] = lambda: comm.Allreduce(host, hout, MPI.SUM)

            def staging_copy():  # the staging's physical cost: pinned device -> host -> device of the same bytes
                backends.to_host_into(x, pinned)
                backends.from_host(pinned, out)
            calls[("pinned copy", "d2h+h2d")] = staging_copy
            times = {k: [] for k in calls}
            for _ in range(repeats):
                for key, fn in calls.items():  # interleaved: every variant sees the same machine state
                    comm.Barrier()
                    t0 = time.perf_counter()
                    fn()
                    sync()
                    times[key].append(comm.allreduce(time.perf_counter() - t0, op=MPI.MAX))
            for p in plans.values():
                p.free()
            med = {k: median(v) for k, v in times.items()}
            for (kind, name), t in med.items():
                row = {"section": "allreduce", "backend": backend, "path": kind, "algorithm": name,
                       "series": f"{backend} {kind} {name}", "bytes": nbytes, "p": comm.size, "time_us": t * 1e6,
                       "busbw_GBps": 2 * (comm.size - 1) / comm.size * nbytes / t / 1e9}
                if kind.startswith("device") and ("host", name) in med:
                    host_t = med[("host", name)]
                    row["host_time_us"] = host_t * 1e6
                    row["staging_us"] = (t - host_t) * 1e6
                    row["pinned_copy_us"] = med[("pinned copy", "d2h+h2d")] * 1e6
                    row["vs_native"] = t / med[("host", "native MPI_Allreduce")]
                rows.append(row)
            del x, out, pinned, plans, calls
    return rows if comm.rank == 0 else []


# -- mlp ----------------------------------------------------------------------------------------------------------
class _Timed:
    """Proxy of a module/kernel object whose named methods are timed by CUDA events into ``record[name]``."""

    def __init__(self, cupy, target, names, record):
        self._cupy, self._target, self._names, self._record = cupy, target, set(names), record

    def __getattr__(self, attr):
        fn = getattr(self._target, attr)
        if attr not in self._names:
            return fn
        cupy, record = self._cupy, self._record

        def timed(*a, **kw):
            start, stop = cupy.cuda.Event(), cupy.cuda.Event()
            start.record()
            r = fn(*a, **kw)
            stop.record()
            stop.synchronize()
            record[attr] = record.get(attr, 0.0) + cupy.cuda.get_elapsed_time(start, stop)
            return r
        return timed


def _ours(cupy, np, sizes_, batch, kernel_name, repeats):
    from mpi4py import MPI

    from ring_allreduce.train import model_kernels, models
    from ring_allreduce.train.optimizer import DistributedOptimizer

    net = models.Network(sizes_, "xent", kernel=model_kernels.get(kernel_name), dtype=np.float32)
    params = cupy.asarray(net.init(0))
    opt = DistributedOptimizer(MPI.COMM_SELF, params, net.specs, lr=0.01, momentum=0.9,
                               alloc=lambda n, dt: cupy.zeros(n, dt))
    X = cupy.random.standard_normal((batch, sizes_[0]), dtype=cupy.float32)
    y = cupy.random.randint(0, sizes_[-1], batch).astype(cupy.int64)

    def step():
        net.loss_and_grad(params, X, y, opt.grad, 1.0 / batch)
        opt.step()
    t = _timer(cupy, step, repeats)
    record = {}
    xp, kernel = net.xp, net.kernel
    net.xp = _Timed(cupy, cupy, ["matmul", "sum"], record)
    net.kernel = _Timed(cupy, kernel, ["relu_", "relu_backward", "softmax_xent"], record)
    timed_steps = max(repeats, 3)
    for _ in range(timed_steps):
        step()
    net.xp, net.kernel = xp, kernel
    breakdown = {k: round(v / timed_steps, 4) for k, v in sorted(record.items(), key=lambda kv: -kv[1])}
    return {"section": "mlp", "impl": f"ring_allreduce ({kernel_name} kernels)", "step_ms": t * 1e3,
            "samples_per_s": batch / t, "params": int(params.size), "breakdown_ms": breakdown,
            "breakdown_note": "CUDA-event time per step of each call (synchronized per call); the rest of the step "
                              "is bias adds and the update"}


def _torch(cupy, sizes_, batch, repeats):
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 GEMMs on both sides (CuPy does not use TF32 by default)
    layers = []
    for i in range(len(sizes_) - 1):
        layers.append(torch.nn.Linear(sizes_[i], sizes_[i + 1]))
        if i < len(sizes_) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    tx = torch.randn(batch, sizes_[0], device="cuda")
    ty = torch.randint(0, sizes_[-1], (batch,), device="cuda")

    def step():
        opt.zero_grad(set_to_none=False)
        loss = torch.nn.functional.cross_entropy(model(tx), ty)
        loss.backward()
        opt.step()
        return loss
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t = _timer(cupy, step, repeats)  # torch's current stream is the legacy default stream, as CuPy's events
    row = {"section": "mlp", "impl": f"torch {torch.__version__}", "step_ms": t * 1e3, "samples_per_s": batch / t,
           "params": sum(p.numel() for p in model.parameters())}
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(repeats):
                step()
            torch.cuda.synchronize()
        kern = []
        for e in prof.key_averages():
            us = getattr(e, "self_device_time_total", None)
            if us is None:
                us = getattr(e, "self_cuda_time_total", 0)
            if us:
                kern.append((e.key[:80], us / 1e3 / repeats))
        kern.sort(key=lambda kv: -kv[1])
        row["breakdown_ms"] = {k: round(v, 4) for k, v in kern[:10]}
    except Exception as e:  # noqa: BLE001 - the breakdown is extra; the step time stands without it
        row["breakdown_error"] = f"{type(e).__name__}: {e}"
    return row


def bench_mlp(cfg, repeats):
    import cupy
    import numpy as np

    sizes_, batch = cfg["sizes"], cfg["batch"]
    rows = []
    for kernel_name in ("cupy", "cupy-numba"):
        try:
            rows.append(_ours(cupy, np, sizes_, batch, kernel_name, repeats))
        except Exception as e:  # noqa: BLE001
            rows.append({"section": "mlp", "impl": f"ring_allreduce ({kernel_name} kernels)",
                         "error": f"{type(e).__name__}: {e}"})
        _free(cupy)
    try:
        import torch

        cuda_ok = torch.cuda.is_available()
    except ImportError:
        torch, cuda_ok = None, False
    if not cuda_ok:  # torch is optional: a skipped row, not a failure
        why = "torch not installed" if torch is None else "torch sees no CUDA GPU (a CPU build)"
        rows.append({"section": "mlp", "impl": "torch", "skipped": why})
    else:
        try:
            rows.append(_torch(cupy, sizes_, batch, repeats))
        except Exception as e:  # noqa: BLE001 - a failing peer is a row; our rows still stand
            rows.append({"section": "mlp", "impl": "torch", "error": f"{type(e).__name__}: {e}"})
    ours = [r for r in rows if "step_ms" in r and r["impl"].startswith("ring")]
    torch_rows = [r for r in rows if "step_ms" in r and r["impl"].startswith("torch")]
    if ours and torch_rows:
        best = min(ours, key=lambda r: r["step_ms"])
        rows.append({"section": "mlp", "impl": "ratio", "best": best["impl"],
                     "vs_torch": best["step_ms"] / torch_rows[0]["step_ms"]})
    return rows


# -- codecs -------------------------------------------------------------------------------------------------------
def _codec_round_trips(ks, x, out, u, n):
    """name -> a callable running one encode + decode of ``x`` with kernel set ``ks``."""
    from ring_allreduce.compression.quantizers import QSGD

    chunk, s = QSGD().chunk, 127  # the package's default QSGD bucket (512)

    def sign():
        bits, scale = ks.sign_encode(x)
        ks.sign_decode(bits, n, scale, out, True)

    def int8():
        q, scale = ks.int8_encode(x)
        ks.int8_decode(q, scale, out, True)

    def qsgd():
        levels, norms = ks.qsgd_encode(x, s, u, chunk)
        ks.qsgd_decode(levels, norms, s, chunk, out, True)

    fns = {"sign": sign, "int8": int8, "qsgd": qsgd}
    if ks.name == "cupy":
        k = max(1, n // 100)

        def topk():  # 1 %: select, gather the values, scatter them back
            idx = ks.topk_indices(x, k)
            ks.scatter(idx, ks.gather(x, idx), out, True)
        fns["topk"] = topk
    return fns


def bench_codec(cfg, repeats):
    import cupy

    from ring_allreduce.compression import kernels as kernel_sets

    rows = []
    for set_name in cfg["kernels"]:
        try:
            ks = kernel_sets.get(set_name)
        except Exception as e:  # noqa: BLE001 - a set that cannot build is a row, not a crash
            rows.append({"section": "codec", "kernels": set_name, "error": f"{type(e).__name__}: {e}"})
            continue
        for nbytes in cfg["bytes"]:
            n = nbytes // 4
            x = cupy.random.standard_normal(n, dtype=cupy.float32)
            out = cupy.zeros(n, cupy.float32)
            u = cupy.random.random(n, dtype=cupy.float32)
            try:
                if set_name == "numba_cuda":
                    from numba import cuda

                    x, out, u = cuda.as_cuda_array(x), cuda.as_cuda_array(out), cuda.as_cuda_array(u)
                fns = _codec_round_trips(ks, x, out, u, n)
            except Exception as e:  # noqa: BLE001
                rows.append({"section": "codec", "kernels": set_name, "bytes": nbytes,
                             "error": f"{type(e).__name__}: {e}"})
                break
            for codec, fn in fns.items():
                try:
                    t = _timer(cupy, fn, repeats)
                except Exception as e:  # noqa: BLE001
                    rows.append({"section": "codec", "kernels": set_name, "codec": codec, "bytes": nbytes,
                                 "error": f"{type(e).__name__}: {e}"})
                    continue
                rows.append({"section": "codec", "kernels": set_name, "codec": codec,
                             "series": f"{set_name} {codec}", "bytes": nbytes, "GBps": nbytes / t / 1e9,
                             "ms": t * 1e3})
            del x, out, u
            _free(cupy)
    r = cfg["powersgd"]["rank"]
    for shape in cfg["powersgd"]["shapes"]:
        m = cupy.random.standard_normal(tuple(shape), dtype=cupy.float32)
        q = cupy.random.standard_normal((shape[1], r), dtype=cupy.float32)

        def powersgd():  # one step's device work: P = M Q, orthogonalize P, Q = M^T P, approximation P Q^T
            p, _ = cupy.linalg.qr(m @ q)
            q2 = m.T @ p
            return p @ q2.T
        t = _timer(cupy, powersgd, repeats)
        nbytes = m.size * 4
        rows.append({"section": "codec", "kernels": "cupy (matmul/QR)", "codec": f"powersgd r={r}",
                     "shape": shape, "bytes": nbytes, "GBps": nbytes / t / 1e9, "ms": t * 1e3,
                     "note": "the steps of the package's (host) PowerSGD, done with CuPy"})
    return rows


# -- output -------------------------------------------------------------------------------------------------------
def plot_rows(path: str, rows, series: str, y: str, title: str) -> bool:
    """A log-x PNG of ``y`` against bytes, one line per ``series`` value; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    pts_rows = [r for r in rows if y in r and series in r and "bytes" in r]
    if not pts_rows:
        return False
    fig, ax = plt.subplots(figsize=(9, 5))
    for name in sorted({r[series] for r in pts_rows}):
        pts = sorted((r["bytes"], r[y]) for r in pts_rows if r[series] == name)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bytes")
    ax.set_ylabel(y)
    ax.set_title(title)
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


#: section -> (series field, y field) of its plot
PLOTS = {"kernels": ("series", "GBps"), "staging": ("host", "h2d_GBps"), "allreduce": ("series", "busbw_GBps"),
         "codec": ("series", "GBps")}

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
            traceback.print_exc()
            rows, status = [{"section": s, "error": f"{type(e).__name__}: {e}"}], 1
        if any("error" in r or r.get("equals_host_run") is False or r.get("identical_on_all_ranks") is False
               for r in rows):
            status = 1
        if rows:
            meta = {"python": platform.python_version(), "seconds": round(time.time() - t0, 1),
                    "argv": sys.argv}
            write_json(os.path.join(args.out, f"gpu_{s}.json"), {"meta": meta, "rows": rows})
            if s in PLOTS:
                plot_rows(os.path.join(args.out, f"gpu_{s}.png"), rows, *PLOTS[s], title=f"GPU {s}")
            print(f"[gpu_bench] {s}: {len(rows)} rows in {meta['seconds']} s", flush=True)
            for r in rows:
                if "error" in r or r.get("equals_host_run") is False or r.get("identical_on_all_ranks") is False:
                    print(f"[gpu_bench] {s}: {json.dumps(r)}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
