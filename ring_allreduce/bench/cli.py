"""``ring-allreduce bench``: nccl-tests/OSU style sweep of the allreduce algorithms against native MPI_Allreduce.

Examples (all ranks run the same command; rank 0 prints and writes the files)::

    mpiexec -n 2 ring-allreduce bench -b 4M -e 64M -f 2 -n 20 -w 5 -c --json out.json --plot out.png
    mpiexec -n 2 ring-allreduce bench --latency -b 8 -e 2K --algorithms auto,auto+check,check,mpi
    mpiexec -n 2 ring-allreduce bench --tune      # writes the table algorithm="auto" reads (ring-allreduce info)
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

from ..usage import ArgumentParser, UsageError, agree, at_least, rank

_DTYPES = {"float": "float32", "fp32": "float32", "float32": "float32", "half": "float16", "fp16": "float16",
           "float16": "float16", "double": "float64", "fp64": "float64", "float64": "float64",
           "int": "int32", "int32": "int32", "int64": "int64", "long": "int64"}
_THREAD_LEVELS = ("single", "funneled", "serialized", "multiple")
#: ``--tune`` without a path: the table ``algorithm="auto"`` reads (see ``ring-allreduce info``)
ACTIVE = "<active table>"
#: --tune measures sizes up to this many bytes in latency mode (stable medians for tiny messages)
_TUNE_LATENCY_MAX = 64 * 1024


def build_parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(prog="ring-allreduce bench", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-b", "--minbytes", default=None, help="smallest message (e.g. 8, 4K, 4M; default 8)")
    ap.add_argument("-e", "--maxbytes", default=None, help="largest message (default 64M; 64K with --latency)")
    ap.add_argument("-f", "--stepfactor", type=float, default=2.0, help="size multiplier between steps (default 2)")
    ap.add_argument("-n", "--iters", type=int, default=None,
                    help="timed iterations per size (default 20; with --latency: calls per block, default 1000)")
    ap.add_argument("-w", "--warmup", type=int, default=None, help="untimed warm-up calls (default 5; 100 latency)")
    ap.add_argument("-c", "--check", type=int, nargs="?", const=1, default=0,
                    help="validate every result against a reference and report #wrong (-c or -c 1; -c 0 is off)")
    ap.add_argument("-d", "--datatype", default="float32", help="float32 (float), float16 (half), float64, int32, int64")
    ap.add_argument("-o", "--op", default="sum", choices=("sum", "avg", "prod", "min", "max"))
    ap.add_argument("--algorithms", default=None,
                    help="comma list (default: every registered algorithm, auto, native mpi, and gloo when torch is "
                         "installed); 'mpi' is native MPI_Allreduce, 'NAME+check' runs NAME with the agreement "
                         "check, 'check' times the agreement check alone")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--inplace", dest="inplace", action="store_true", default=True, help="out=x (default)")
    where.add_argument("--out-of-place", dest="inplace", action="store_false", help="separate output buffer")
    ap.add_argument("--latency", action="store_true",
                    help="OSU-style latency mode: time blocks of back-to-back calls (small messages)")
    ap.add_argument("--repeats", type=int, default=5, help="latency mode: timed blocks per size (default 5)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="split the iterations into rounds cycling through the algorithms, so load changes on a "
                         "shared machine hit every algorithm alike (default 1)")
    ap.add_argument("--agreement-check", action="store_true",
                    help="run allreduce's cross-rank agreement check (check=True) in every call (default off)")
    ap.add_argument("--kernel", default=None, help="reduction kernel name (default: the array backend's)")
    ap.add_argument("--thread-level", choices=_THREAD_LEVELS, default=None,
                    help="MPI thread level to initialise with (mpi4py's default is multiple; C benchmarks get single)")
    ap.add_argument("--json", metavar="PATH", help="write {meta, rows} JSON (rank 0)")
    ap.add_argument("--csv", metavar="PATH", help="write rows as CSV (rank 0)")
    ap.add_argument("--plot", metavar="PATH", help="plot busbw and time vs size (needs matplotlib); the format "
                    "follows the extension: .png, .pdf, .svg")
    ap.add_argument("--model", action="store_true", help="fit alpha/beta/gamma, print predicted vs measured, crossovers")
    ap.add_argument("--tune", metavar="PATH", nargs="?", const=ACTIVE, default=None,
                    help="measure the package algorithms and write (merge) the auto selection table for this p "
                         "(default: the table algorithm='auto' reads: $RING_ALLREDUCE_AUTO_TABLE, else the "
                         "package's copy; small sizes are timed in latency mode)")
    ap.add_argument("--from", dest="from_files", nargs="+", metavar="JSON",
                    help="with --tune and/or --model: use these result files (medians over repeats) instead of "
                         "measuring; no MPI needed")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    return ap


def _config(args, comm):
    """Validate the flags into a :class:`~.sweep.Config`; a bad one raises :class:`UsageError` (same on every rank)."""
    from . import sweep

    dtype = _DTYPES.get(args.datatype.lower())
    if dtype is None:
        raise UsageError(f"unknown datatype {args.datatype!r}; valid: {', '.join(_DTYPES)}")
    itemsize = {"float16": 2, "float32": 4, "float64": 8, "int32": 4, "int64": 8}[dtype]
    try:
        lo = sweep.parse_size(args.minbytes or 8)
        hi = sweep.parse_size(args.maxbytes or ("64K" if args.latency else "64M"))
    except ValueError as e:
        raise UsageError(str(e)) from None
    if hi < lo:
        raise UsageError(f"-e/--maxbytes ({args.maxbytes}) is smaller than -b/--minbytes ({args.minbytes or 8})")
    if not (math.isfinite(args.stepfactor) and args.stepfactor > 1):
        raise UsageError(f"-f/--stepfactor must be a finite number > 1, got {args.stepfactor}")
    for flag, value, low in (("-n/--iters", args.iters, 1), ("-w/--warmup", args.warmup, 0),
                             ("--repeats", args.repeats, 1), ("--rounds", args.rounds, 1), ("-c/--check", args.check, 0)):
        at_least(flag, value, low)
    if args.algorithms:
        algs = [a.strip() for a in args.algorithms.split(",") if a.strip()]
        if not algs:
            raise UsageError("--algorithms needs at least one name")
    elif args.tune:
        from .. import algorithms

        from .tune import NODE_AWARE

        algs = [a for a in algorithms.names() if a not in NODE_AWARE and a != sweep.NATIVE] + [sweep.NATIVE]
    else:
        algs = sweep.default_algorithms()
        from . import gloo

        if gloo._local_reason() is None:
            algs.append(sweep.GLOO)
    try:
        sweep.validate_names(algs)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.tune and any(a in (sweep.GLOO, sweep.CHECK_ONLY) or a.endswith(sweep.CHECK_SUFFIX) for a in algs):
        raise UsageError("--tune takes only package algorithms (and mpi)")
    if args.kernel is not None:
        from .. import kernels

        if args.kernel not in kernels.names():
            raise UsageError(f"unknown --kernel {args.kernel!r}; valid: {', '.join(kernels.names())}")
    cfg = sweep.Config(
        sizes=sweep.message_sizes(lo, hi, args.stepfactor, itemsize), algorithms=algs, dtype=dtype, op=args.op,
        iters=args.iters if args.iters is not None else (1000 if args.latency else 20),
        warmup=args.warmup if args.warmup is not None else (100 if args.latency else 5),
        inplace=args.inplace, check=bool(args.check), agree=args.agreement_check, latency=args.latency,
        repeats=args.repeats, rounds=args.rounds, kernel=args.kernel, seed=args.seed)
    if sweep.GLOO in cfg.algorithms:
        from . import gloo

        reason = gloo.unavailable_reason(comm)
        if reason:
            cfg.skipped[sweep.GLOO] = reason
            cfg.algorithms.remove(sweep.GLOO)
    return cfg


def _progress(quiet: bool, rank: int, emit_row):
    def cb(info):
        if rank != 0:
            return
        emit_row(info["row"])
        if not quiet:
            done, total, el = info["done"], info["total"], info["elapsed_s"]
            r = info["row"]
            sys.stderr.write(f"[bench] {done}/{total} ({100 * done // total}%) {r['algorithm']} "
                             f"{r['size_bytes']} B, {el:.1f} s elapsed\n")
            sys.stderr.flush()
    return cb


def _tune_runs(comm, cfg, progress):
    """Small sizes in latency mode (many back-to-back calls), the rest in bandwidth mode."""
    import copy

    from . import sweep

    rows = []
    small = [s for s in cfg.sizes if s <= _TUNE_LATENCY_MAX]
    large = [s for s in cfg.sizes if s > _TUNE_LATENCY_MAX]
    if small:
        c = copy.copy(cfg)
        c.sizes, c.latency = small, True
        c.iters, c.warmup = max(cfg.iters, 200), max(cfg.warmup, 20)
        rows += sweep.run(comm, c, progress)
    if large:
        c = copy.copy(cfg)
        c.sizes, c.latency = large, False
        rows += sweep.run(comm, c, progress)
    return rows


def _tune_from_files(args) -> int:
    """``--tune PATH --from A.json B.json ...``: write the table from earlier runs (grouped by p)."""
    import time as _time

    from . import report, summary, tune

    if not args.tune and not args.model:
        raise UsageError("--from goes with --tune and/or --model")
    if args.tune:
        args.tune = _tune_path(args.tune)
    by_p: dict = {}
    for path in args.from_files:
        try:
            meta, rows = report.read_json(path)
        except (OSError, ValueError) as e:
            raise UsageError(f"--from {path}: {getattr(e, 'strerror', None) or e}") from None
        by_p.setdefault(int(meta["p"]), []).append((path, meta, rows))
    for p, docs in sorted(by_p.items()):
        # per algorithm and size, the median over every run that measured it (files may cover different ranges)
        merged = summary.merge([(meta, rows) for _, meta, rows in docs])[1]
        if args.model:
            from . import model

            f = model.fit(merged, p)
            print(model.format_report(f, model.compare(merged, f), model.crossovers(merged, f)), end="")
        if not args.tune:
            continue
        rules = tune.rules_for(merged)
        m0 = docs[0][1]
        note = {"command": "ring-allreduce bench --tune %s --from %s" % (args.tune, " ".join(p_ for p_, _, _ in docs)),
                "measured_by": sorted({" ".join(m.get("argv", [])) for _, m, _ in docs}),
                "date_utc": _time.strftime("%Y-%m-%dT%H:%M:%SZ", _time.gmtime()),
                "runs_date_utc": sorted(m.get("date_utc") for _, m, _ in docs),
                "mpi_library": m0.get("mpi_library"), "thread_level": m0.get("thread_level"),
                "hosts": m0.get("hosts"), "dtype": m0.get("dtype"),
                "load_avg": [m.get("load_avg") for _, m, _ in docs], "winners": tune.winners(merged)}
        tune.write_table(args.tune, p, rules, note)
        print(tune.format_rules(p, rules), end="")
    if args.tune:
        print(f"# wrote {args.tune}")
    return 0


def _tune_path(path: str) -> str:
    """Where ``--tune`` writes: the given file, or the active table; checked writable before measuring."""
    from ..info import auto_table_source

    active, why = auto_table_source()
    target = active if path == ACTIVE else path
    folder = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK) or (
            os.path.exists(target) and not os.access(target, os.W_OK)):
        raise UsageError(f"--tune: cannot write {target}; give a writable path and point "
                         "RING_ALLREDUCE_AUTO_TABLE at it")
    if os.path.abspath(target) != active and rank() == 0:
        sys.stderr.write(f"ring-allreduce bench: note: algorithm='auto' reads {active} ({why}); to use the table "
                         f"written here: export RING_ALLREDUCE_AUTO_TABLE={os.path.abspath(target)}\n")
    return target


def _plot(path: str, meta: dict, rows: list) -> None:
    try:
        from . import plot
    except ImportError as e:  # pragma: no cover - matplotlib missing
        sys.stderr.write(f"ring-allreduce bench: no plot ({e}); pip install matplotlib\n")
        return
    try:
        plot.plot(path, meta, rows)
    except ImportError as e:
        sys.stderr.write(f"ring-allreduce bench: no plot ({e}); pip install matplotlib\n")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.plot:
        from .plot import check_format

        check_format(args.plot)
    if args.from_files:
        return _tune_from_files(args)
    import mpi4py

    if args.thread_level:
        mpi4py.rc.thread_level = args.thread_level
    from mpi4py import MPI

    from . import report, sweep

    comm = MPI.COMM_WORLD
    rank, p = comm.Get_rank(), comm.Get_size()
    cfg = agree(comm, _config, args, comm)
    if args.tune:
        args.tune = agree(comm, _tune_path, args.tune, root=0)
    if p == 1 and rank == 0:
        sys.stderr.write("ring-allreduce bench: p=1 (no mpiexec?): nothing is communicated, so only the times are "
                         "shown (no algbw/busbw); run under mpiexec -n 2 or more to compare algorithms\n")
    meta = sweep.describe(comm, cfg)
    if args.thread_level and meta["thread_level"] != args.thread_level and rank == 0:
        sys.stderr.write(f"ring-allreduce bench: asked for thread level {args.thread_level}, "
                         f"MPI provided {meta['thread_level']}\n")
    meta["skipped"] = dict(cfg.skipped)
    if args.tune:
        meta["mode"] = "tune (latency mode up to %d B, bandwidth mode above)" % _TUNE_LATENCY_MAX
    if rank == 0:
        print("\n".join(report.header_lines(meta) + ["#", report.column_header()]), flush=True)
    emit = (lambda row: print(report.format_row(row, bandwidth=p > 1), flush=True))
    progress = _progress(args.quiet, rank, emit)
    t0 = time.perf_counter()
    rows = _tune_runs(comm, cfg, progress) if args.tune else sweep.run(comm, cfg, progress)
    meta["elapsed_s"] = round(time.perf_counter() - t0, 3)
    text = []
    if args.model or args.tune:
        from . import model

        f = model.fit(rows, p)
        cmp_rows = model.compare(rows, f)
        cross = model.crossovers(rows, f)
        meta["model"] = {"fit": f.as_dict(), "crossovers": cross}
        if args.model:
            text.append(model.format_report(f, cmp_rows, cross))
    if args.tune:
        from . import tune

        rules = tune.rules_for(rows)
        note = {"command": "mpiexec -n %d ring-allreduce bench %s" % (p, " ".join(sys.argv[2:] if argv is None
                                                                                   else argv)),
                "date_utc": meta["date_utc"], "mpi_library": meta["mpi_library"],
                "thread_level": meta["thread_level"], "hosts": meta["hosts"], "dtype": cfg.dtype,
                "winners": tune.winners(rows)}
        if rank == 0:
            tune.write_table(args.tune, p, rules, note)
            text.append(tune.format_rules(p, rules) + f"# wrote {args.tune}\n")
        meta["tuned_rules"] = rules
    if rank == 0:
        print("\n".join(report.footer_lines(rows, bandwidth=p > 1)), flush=True)
        if text:
            print("".join(text), end="", flush=True)
        if args.json:
            report.write_json(args.json, meta, rows)
        if args.csv:
            report.write_csv(args.csv, meta, rows)
        if args.plot:
            _plot(args.plot, meta, rows)
    comm.Barrier()
    wrong = sum(r["wrong"] or 0 for r in rows)
    return 1 if wrong else 0
