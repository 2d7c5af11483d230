#!/usr/bin/env python3
"""What the one-shot ``allreduce`` adds to native ``MPI_Allreduce`` for a small message, piece by piece.

Run under ``mpiexec -n 2`` (every rank times the same loops; rank 0 prints). Each row is the median over
``--repeats`` of the mean ns per call of ``--calls`` back-to-back calls, float32, out of place:

* ``native``: ``comm.Allreduce(x, out, MPI.SUM)`` (mpi4py's buffer parsing included);
* ``plan``: ``allreduce_init`` once, then the plan's prebuilt call;
* ``one-shot auto``: ``ring_allreduce.allreduce(x, comm, algorithm="auto", out=out, check=False)``;
* ``one-shot auto + check``: the same with ``check=True``;
* ``floor: lookup + call``: the lowest a one-shot entry point in Python can reach: a function with the same
  keyword arguments that looks the cached schedule up and runs it, with no buffer check and no communicator
  lookup (it would accept a read-only or aliased ``out``, so it is not an option, only the bound);
* then the one-shot path's Python pieces alone (no MPI): an empty call with the same arguments, the cache-key
  lookup, the buffer checks of the checked path (contiguity, writability, shape/dtype, disjointness) and the
  fewer ones of the check-off native path (shape, C order, disjointness: mpi4py refuses the rest itself).

    mpiexec -n 2 python benchmarks/oneshot_overhead.py --bytes 8
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
from mpi4py import MPI


def per_call_ns(fn, calls: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        fn()
    return (time.perf_counter_ns() - t0) / calls


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bytes", type=int, default=8)
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    import ring_allreduce as ra
    from ring_allreduce import plan as plan_mod
    from ring_allreduce import transport

    comm = MPI.COMM_WORLD
    x = np.ones(max(args.bytes // 4, 1), np.float32)
    out = np.empty_like(x)
    p = ra.allreduce_init(x, comm, algorithm="auto", out=out)
    ra.allreduce(x, comm, algorithm="auto", out=out, check=False)  # fills the one-shot cache
    plans = transport.of(comm).plans
    key = (x.size, x.dtype, "sum", "auto", None)

    def empty(x, comm=None, *, op="sum", algorithm="auto", out=None, kernel=None, check=None):
        return out

    def floor(x, comm=None, *, op="sum", algorithm="auto", out=None, kernel=None, check=None):
        return plans.get((x.size, x.dtype, op, algorithm, kernel)).hot(x, out)

    def key_lookup():
        return plans.get((x.size, x.dtype, "sum", "auto", None))

    def buffer_checks():
        return (x.flags.c_contiguous and type(out) is np.ndarray and out.shape == x.shape and out.dtype == x.dtype
                and out.flags.c_contiguous and out.flags.writeable and plan_mod.disjoint(out, x))

    def lean_checks():
        one = x.ndim == 1
        return ((one or x.flags.c_contiguous) and type(out) is np.ndarray
                and (out.ndim == 1 if one else out.shape == x.shape and out.flags.c_contiguous)
                and (out.base is None and x.base is None))

    rows = {
        "native": lambda: comm.Allreduce(x, out, MPI.SUM),
        "plan": p._run,
        "one-shot auto": lambda: ra.allreduce(x, comm, algorithm="auto", out=out, check=False),
        "one-shot auto + check": lambda: ra.allreduce(x, comm, algorithm="auto", out=out, check=True),
        "floor: lookup + call, no checks": lambda: floor(x, comm, algorithm="auto", out=out, check=False),
    }
    local = {
        "(python) empty call, same arguments": lambda: empty(x, comm, algorithm="auto", out=out, check=False),
        "(python) cache-key lookup": key_lookup,
        "(python) buffer checks (check on)": buffer_checks,
        "(python) buffer checks (check off)": lean_checks,
    }
    res = {k: [] for k in list(rows) + list(local)}
    for _ in range(args.repeats):
        for name, fn in rows.items():  # interleaved; both ranks run the same loop
            comm.Barrier()
            res[name].append(per_call_ns(fn, args.calls))
        for name, fn in local.items():
            res[name].append(per_call_ns(fn, args.calls))
    p.free()
    if comm.rank == 0:
        native = statistics.median(res["native"])
        print(f"p={comm.size}, {x.nbytes} B float32, out of place, median of {args.repeats} x {args.calls} calls "
              f"(plans cached: {key in plans})")
        for name, v in res.items():
            m = statistics.median(v)
            rel = f"{m / native:5.2f}x native" if not name.startswith("(") else ""
            print(f"  {name:38s} {m:8.0f} ns  {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
