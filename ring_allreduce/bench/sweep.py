"""Run the measurements: every algorithm at every message size, returned as rows (plain dicts), identical on all ranks.

Timing follows mpi4py's ``bench.py`` and the OSU/nccl-tests habits: buffers are allocated before timing, the call
is a bound callable built outside the loop, warm-up calls are excluded, and each timed iteration starts after a
``Barrier``. The time of an iteration is the slowest rank's (per-iteration times are max-reduced across ranks); a
row reports the median, min and max of those. Latency mode (OSU style) instead times blocks of back-to-back calls
and reports the per-call time of each block. Printing is left to :mod:`.report`.
"""
from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import numpy as np

#: the fields of a row, in order (the JSON schema of ``rows``)
ROW_FIELDS = ("algorithm", "size_bytes", "count", "dtype", "op", "time_us", "time_us_min", "time_us_max",
              "algbw_GBps", "busbw_GBps", "wrong")
#: the native baseline: ``MPI.Allreduce`` called straight through mpi4py (no package code in the timed call)
NATIVE = "mpi"
#: pseudo-algorithm timing only the cross-rank agreement check (the ``check=`` argument's own cost)
CHECK_ONLY = "check"
#: suffix that turns the agreement check on for one algorithm, e.g. ``auto+check``
CHECK_SUFFIX = "+check"
GLOO = "gloo"
#: a persistent plan of ``auto`` (``allreduce_init`` once per size, then ``plan()`` timed); ``plan:<algorithm>``
#: times a plan of that algorithm
PLAN = "plan"


@dataclass
class Config:
    """What to measure; every rank must hold the same values."""

    sizes: List[int]
    algorithms: List[str]
    dtype: str = "float32"
    op: str = "sum"
    iters: int = 20
    warmup: int = 5
    inplace: bool = True
    check: bool = False  # validate every result against a reference (-c)
    agree: bool = False  # run allreduce's cross-rank agreement check (check=True) in every call
    latency: bool = False  # OSU style: time blocks of back-to-back calls
    repeats: int = 5  # latency mode: number of timed blocks
    rounds: int = 1  # split the iterations into rounds that cycle through the algorithms (fair on a noisy machine)
    kernel: Optional[str] = None
    seed: int = 1234
    skipped: dict = field(default_factory=dict)  # algorithm -> reason it was not run (filled by run)


def parse_size(text) -> int:
    """Parse ``"8"``, ``"4K"``, ``"4KiB"``, ``"64M"``, ``"1G"`` (binary multiples) into bytes."""
    s = str(text).strip().upper().replace("IB", "").rstrip("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1:], 1)
    if mult != 1:
        s = s[:-1]
    try:
        value = float(s) * mult
    except ValueError:
        raise ValueError(f"bad size {text!r}; use e.g. 8, 4K, 64M, 1G") from None
    if value < 0 or value != int(value):
        raise ValueError(f"bad size {text!r}: must be a whole, non-negative number of bytes")
    return int(value)


def message_sizes(minbytes: int, maxbytes: int, factor: float = 2, itemsize: int = 1) -> List[int]:
    """Sizes from ``minbytes`` to ``maxbytes`` multiplying by ``factor``, rounded down to whole elements."""
    if factor <= 1:
        raise ValueError(f"step factor must be > 1, got {factor}")
    if maxbytes < minbytes:
        raise ValueError(f"maxbytes {maxbytes} < minbytes {minbytes}")
    out, s = [], float(max(minbytes, itemsize))
    while s <= maxbytes * (1 + 1e-9):
        b = int(s) // itemsize * itemsize
        if not out or b != out[-1]:
            out.append(b)
        s *= factor
    return out


def default_algorithms() -> List[str]:
    """Every registered algorithm run through the package, ``auto``, then the native baseline."""
    from .. import algorithms

    return [n for n in algorithms.names() if n != NATIVE] + ["auto", NATIVE]


def thread_level_name() -> str:
    from mpi4py import MPI

    names = {MPI.THREAD_SINGLE: "single", MPI.THREAD_FUNNELED: "funneled",
             MPI.THREAD_SERIALIZED: "serialized", MPI.THREAD_MULTIPLE: "multiple"}
    return names.get(MPI.Query_thread(), str(MPI.Query_thread()))


def describe(comm, cfg: Config) -> dict:
    """The run's metadata (collective: gathers host names)."""
    import platform
    import sys

    import mpi4py
    from mpi4py import MPI

    from .. import __version__ as version

    hosts = comm.allgather(MPI.Get_processor_name())
    per_host = {h: hosts.count(h) for h in dict.fromkeys(hosts)}
    return {
        "tool": "ring-allreduce bench",
        "version": version,
        "mode": "latency" if cfg.latency else "bandwidth",
        "mpi_library": MPI.Get_library_version().strip().splitlines()[0].strip(),
        "mpi_version": "%d.%d" % MPI.Get_version(),
        "mpi4py": mpi4py.__version__,
        "thread_level": thread_level_name(),
        "p": comm.Get_size(),
        "hosts": per_host,
        "dtype": cfg.dtype,
        "op": cfg.op,
        "iters": cfg.iters,
        "warmup": cfg.warmup,
        "repeats": cfg.repeats if cfg.latency else None,
        "rounds": cfg.rounds,
        "inplace": cfg.inplace,
        "check": cfg.check,
        "agreement_check": cfg.agree,
        "kernel": cfg.kernel,
        "timing": ("per-call time of blocks of back-to-back calls (max across ranks per block); "
                   "median/min/max over blocks" if cfg.latency else
                   "per-iteration time after a Barrier (max across ranks per iteration); median/min/max over iterations"),
        "busbw": "algbw * 2(p-1)/p (nccl-tests); GB = 1e9 bytes",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "argv": list(sys.argv),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        # other work on the node distorts timings: keep the load the run started under with its results
        "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "cpus": os.cpu_count(),
    }


# ----------------------------------------------------------------------------------------------- inputs, references

def rank_input(seed: int, rank: int, count: int, dtype, op: str) -> np.ndarray:
    """This rank's deterministic input: N(0,1) floats, small integers, or {1, 2, -1} for ``prod`` (exact)."""
    rng = np.random.default_rng([seed, rank, count])
    dt = np.dtype(dtype)
    if op == "prod":
        return rng.choice(np.array([1, 1, 1, 2, -1]), size=count).astype(dt)
    if dt.kind == "f":
        return rng.standard_normal(count).astype(dt)
    return rng.integers(-1000, 1000, size=count).astype(dt)


class Reference:
    """The expected result of one input and a per-element tolerance; counts wrong elements of an output.

    Integers are compared exactly with native ``MPI.Allreduce`` (``avg`` floor-divides the sum, as the package
    does). Floats are compared with a float64 native reduction of the same inputs (exact for p < 2**29 float32
    terms): summing p terms in any order errs by at most (p-1)u*sum|x_i| (u the unit roundoff of the dtype),
    ``avg`` adds one rounding of the division (and float16's divide-first one more per term), so
    (p+1)u*sum|x_i| (over p for ``avg``) bounds every correct result; min, max and ``prod`` of {1, 2, -1} are exact.
    """

    def __init__(self, comm, x: np.ndarray, op: str):
        from mpi4py import MPI

        from ..ops import mpi_op

        p = comm.Get_size()
        self.exact = x.dtype.kind != "f"
        base = x if self.exact else x.astype(np.float64)
        ref = np.empty_like(base)
        comm.Allreduce(base, ref, mpi_op(op))
        if op == "avg":
            ref = ref // p if self.exact else ref / p
        self.ref = ref
        self.tol = None
        if not self.exact and op in ("sum", "avg"):
            mag = np.empty_like(base)
            comm.Allreduce(np.abs(base), mag, MPI.SUM)
            u = np.finfo(x.dtype).eps / 2
            self.tol = (p + 1) * u * mag / (p if op == "avg" else 1) + np.finfo(x.dtype).tiny * p

    def wrong(self, out: np.ndarray) -> int:
        """Number of elements of ``out`` that differ from the reference (beyond the tolerance for floats)."""
        if self.exact:
            return int(np.count_nonzero(out.reshape(-1) != self.ref))
        diff = np.abs(out.reshape(-1).astype(np.float64) - self.ref)
        if self.tol is None:
            return int(np.count_nonzero(~(diff == 0)))
        return int(np.count_nonzero(~(diff <= self.tol)))  # NaN counts as wrong


# ------------------------------------------------------------------------------------------------------ callables

def make_call(comm, name: str, x: np.ndarray, out: np.ndarray, cfg: Config) -> Callable[[], object]:
    """A no-argument callable running one allreduce of ``x`` into ``out`` with algorithm ``name``."""
    from mpi4py import MPI

    from .. import api
    from ..ops import mpi_op

    if name == NATIVE:
        send = MPI.IN_PLACE if out is x else x
        allreduce, mop = comm.Allreduce, mpi_op(cfg.op)
        if cfg.op != "avg":
            return functools.partial(allreduce, send, out, mop)
        from .. import kernels

        scale, p = kernels.get("numpy").scale, comm.Get_size()

        def native_avg():
            allreduce(send, out, mop)
            scale(out, out, p)
        return native_avg
    if name == CHECK_ONLY:
        from .. import agreement
        from ..ops import dtype_code, op_code

        words = agreement.pack(False, x.size, dtype_code(x.dtype), op_code(cfg.op), agreement.algorithm_code("auto"))
        details = {"count": x.size, "dtype": str(x.dtype), "op": cfg.op, "algorithm": "auto"}
        return functools.partial(agreement.check, comm, words, details)
    if name == GLOO:
        from . import gloo

        return gloo.make_call(comm, x, out, cfg.op)
    if name == PLAN or name.startswith(PLAN + ":"):
        # the plan's prebuilt closure, not plan.__call__: the same work, one Python call less in the timed loop
        plan = api.allreduce_init(x, comm, op=cfg.op, algorithm=name[len(PLAN) + 1:] or "auto", out=out,
                                  kernel=cfg.kernel)
        return plan._run
    agree = cfg.agree
    if name.endswith(CHECK_SUFFIX):
        name, agree = name[: -len(CHECK_SUFFIX)], True
    return functools.partial(api.allreduce, x, comm, op=cfg.op, algorithm=name, out=out, check=agree,
                             kernel=cfg.kernel)


def validate_names(names: List[str]) -> None:
    """Raise ``ValueError`` naming the valid choices for an unknown algorithm name."""
    from .. import algorithms

    valid = set(algorithms.names()) | {"auto", NATIVE, CHECK_ONLY, GLOO, PLAN}
    for n in names:
        base = n[: -len(CHECK_SUFFIX)] if n.endswith(CHECK_SUFFIX) else n
        if base.startswith(PLAN + ":") and base[len(PLAN) + 1:] in set(algorithms.names()) | {"auto"}:
            continue
        if base not in valid or (n.endswith(CHECK_SUFFIX) and base in (NATIVE, CHECK_ONLY, GLOO, PLAN)):
            raise ValueError(f"unknown benchmark algorithm {n!r}; valid: {', '.join(sorted(valid))} "
                             f"(append {CHECK_SUFFIX!r} to a package algorithm to time it with the agreement check)")


# ----------------------------------------------------------------------------------------------------------- timing

def _time_iterations(comm, call, cfg: Config, reset, count_wrong) -> tuple:
    """Per-iteration seconds (max across ranks) and the worst #wrong seen (None without ``cfg.check``)."""
    from mpi4py import MPI

    barrier, timer = comm.Barrier, time.perf_counter
    wrong = 0 if cfg.check else None
    for _ in range(cfg.warmup):
        call()
    if cfg.latency:
        times = np.empty(max(1, cfg.repeats))
        for b in range(times.size):
            reset()
            barrier()
            t0 = timer()
            for _ in range(cfg.iters):
                call()
            times[b] = (timer() - t0) / cfg.iters
            if cfg.check:  # one extra call per block, outside the timed loop, validated from a fresh input
                reset()
                call()
                wrong = max(wrong, count_wrong())
    else:
        times = np.empty(max(1, cfg.iters))
        for i in range(times.size):
            if cfg.check:
                reset()
            barrier()
            t0 = timer()
            call()
            times[i] = timer() - t0
            if cfg.check:
                wrong = max(wrong, count_wrong())
    comm.Allreduce(MPI.IN_PLACE, times, MPI.MAX)
    if wrong is not None:
        total = np.array([wrong], dtype=np.int64)
        comm.Allreduce(MPI.IN_PLACE, total, MPI.SUM)
        wrong = int(total[0])
    return times, wrong


def make_row(name: str, nbytes: int, count: int, cfg: Config, p: int, times: np.ndarray, wrong) -> dict:
    t = float(np.median(times))
    algbw = nbytes / t / 1e9 if t > 0 and name != CHECK_ONLY else 0.0
    return {
        "algorithm": name, "size_bytes": int(nbytes), "count": int(count), "dtype": cfg.dtype, "op": cfg.op,
        "time_us": t * 1e6, "time_us_min": float(times.min()) * 1e6, "time_us_max": float(times.max()) * 1e6,
        "algbw_GBps": algbw, "busbw_GBps": algbw * 2 * (p - 1) / p, "wrong": wrong,
    }


def run(comm, cfg: Config, progress: Optional[Callable[[dict], None]] = None) -> List[dict]:
    """Measure every (size, algorithm) of ``cfg``; return the rows (the same list on every rank).

    ``progress``, if given, is called on every rank after each row with ``{"done", "total", "row", "elapsed_s"}``.
    """
    validate_names(cfg.algorithms)
    names = list(cfg.algorithms)
    if GLOO in names:
        from . import gloo

        reason = gloo.unavailable_reason(comm)
        if reason:
            cfg.skipped[GLOO] = reason
            names.remove(GLOO)
    p, rank = comm.Get_size(), comm.Get_rank()
    dt = np.dtype(cfg.dtype)
    rows, t_start = [], time.perf_counter()
    total = len(cfg.sizes) * len(names)
    for nbytes in cfg.sizes:
        count = nbytes // dt.itemsize
        pristine = rank_input(cfg.seed, rank, count, dt, cfg.op)
        x = pristine.copy()
        out = x if cfg.inplace else np.empty_like(x)
        ref = Reference(comm, pristine, cfg.op) if cfg.check else None
        copyto = np.copyto

        def reset():
            copyto(x, pristine)

        def count_wrong():
            return ref.wrong(out)

        rounds = max(1, min(cfg.rounds, cfg.repeats if cfg.latency else cfg.iters))
        per_round = _split(cfg, rounds)
        got: dict = {name: ([], []) for name in names}
        for k, sub in enumerate(per_round):
            for name in names:
                reset()
                call = make_call(comm, name, x, out, cfg)
                has_output = name != CHECK_ONLY
                # in place, repeated sums grow the data to inf (not slower on x86); keep NumPy from warning
                with np.errstate(over="ignore", invalid="ignore"):
                    t, w = _time_iterations(comm, call, sub if k == 0 else _no_warmup(sub), reset,
                                            count_wrong if has_output else (lambda: 0))
                got[name][0].append(t)
                got[name][1].append(w)
        for name in names:
            times = np.concatenate(got[name][0])
            ws = [w for w in got[name][1] if w is not None]
            wrong = max(ws) if ws and name != CHECK_ONLY else None
            row = make_row(name, count * dt.itemsize, count, cfg, p, times, wrong)
            rows.append(row)
            if progress is not None:
                progress({"done": len(rows), "total": total, "row": row, "elapsed_s": time.perf_counter() - t_start})
    return rows


def _split(cfg: Config, rounds: int) -> List[Config]:
    """``rounds`` copies of ``cfg`` sharing its iterations (or latency blocks) between them."""
    import copy

    n = cfg.repeats if cfg.latency else cfg.iters
    out = []
    for k in range(rounds):
        c = copy.copy(cfg)
        share = n // rounds + (1 if k < n % rounds else 0)
        if cfg.latency:
            c.repeats = share
        else:
            c.iters = share
        out.append(c)
    return out


def _no_warmup(cfg: Config) -> Config:
    import copy

    c = copy.copy(cfg)
    c.warmup = min(cfg.warmup, 1)  # one call re-warms the caches after the other algorithms ran
    return c
