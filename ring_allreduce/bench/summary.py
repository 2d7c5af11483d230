"""Summarise result files as Markdown: busbw (or time) per algorithm and size, with the ratio to native ``mpi``."""
from __future__ import annotations

from typing import List


def _fmt_size(n: int) -> str:
    from .report import human_size

    return human_size(n)


def markdown(meta: dict, rows: List[dict], metric: str = "busbw_GBps", baseline: str = "mpi") -> str:
    """A table: one line per size, one column per algorithm; ``x.xx (1.23x)`` against ``baseline`` when present.

    ``metric`` is ``busbw_GBps`` (higher is better) or ``time_us`` (lower is better; the ratio is then
    ``time / baseline time``).
    """
    algs = list(dict.fromkeys(r["algorithm"] for r in rows))
    sizes = sorted({r["size_bytes"] for r in rows})
    val = {(r["algorithm"], r["size_bytes"]): r[metric] for r in rows}
    where = "in-place" if meta.get("inplace", True) else "out-of-place"
    unit = "busbw GB/s" if metric == "busbw_GBps" else "time µs"
    lines = [f"p={meta.get('p')}, {meta.get('dtype')} {meta.get('op')}, {where}, {unit} "
             f"(ratio to {baseline}), {meta.get('mpi_library', '')}, thread level {meta.get('thread_level')}", "",
             "| size | " + " | ".join(algs) + " |", "|---:|" + "---:|" * len(algs)]
    for s in sizes:
        cells = []
        base = val.get((baseline, s))
        for a in algs:
            v = val.get((a, s))
            if v is None:
                cells.append("")
                continue
            text = f"{v:.2f}"
            if base and a != baseline and v:
                ratio = v / base
                text += f" ({ratio:.2f}x)"
            cells.append(text)
        lines.append(f"| {_fmt_size(s)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def merge(docs: List[tuple], how: str = "median") -> tuple:
    """Combine repeated runs ``[(meta, rows), ...]`` of one configuration into ``(meta, rows)``.

    ``how="best"``: the least disturbed run whole (smallest sum of median times; on a shared node other jobs
    slow whole runs down, and within a run the algorithms are interleaved, so its comparisons stay fair).
    ``how="median"``: per (algorithm, size) the median of the runs' medians, the smallest min, the largest max.
    """
    import statistics

    if not docs:
        raise ValueError("nothing to merge")
    if how == "best":
        best = min(range(len(docs)), key=lambda i: sum(r["time_us"] for r in docs[i][1]))
        meta = dict(docs[best][0])
        meta["merged"] = {"how": "least disturbed of %d runs (smallest sum of median times)" % len(docs),
                          "chosen_run": best + 1,
                          "runs": [{"date_utc": m.get("date_utc"), "load_avg": m.get("load_avg"),
                                    "sum_time_us": round(sum(r["time_us"] for r in rows), 1)} for m, rows in docs]}
        return meta, [dict(r) for r in docs[best][1]]
    if how != "median":
        raise ValueError(f"how must be 'best' or 'median', not {how!r}")
    groups: dict = {}
    for _, rows in docs:
        for r in rows:
            groups.setdefault((r["algorithm"], r["size_bytes"]), []).append(r)
    p = docs[0][0].get("p", 1)
    out = []
    for (alg, size), rs in groups.items():
        t = statistics.median(r["time_us"] for r in rs)
        algbw = size / (t * 1e-6) / 1e9 if t > 0 and alg != "check" else 0.0
        wrong = [r["wrong"] for r in rs if r["wrong"] is not None]
        out.append(dict(rs[0], time_us=t, time_us_min=min(r["time_us_min"] for r in rs),
                        time_us_max=max(r["time_us_max"] for r in rs), algbw_GBps=algbw,
                        busbw_GBps=algbw * 2 * (p - 1) / p if p > 1 else 0.0, wrong=sum(wrong) if wrong else None))
    meta = dict(docs[0][0])
    meta["merged"] = {"how": "median of %d runs per algorithm and size" % len(docs),
                      "runs": [{"date_utc": m.get("date_utc"), "load_avg": m.get("load_avg")} for m, _ in docs]}
    return meta, out


def main(argv=None) -> int:
    import argparse

    from .report import read_json

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("files", nargs="+", help="JSON files written by `ring-allreduce bench --json`")
    ap.add_argument("--metric", default=None, choices=("busbw_GBps", "time_us"),
                    help="default: time_us for latency-mode files, busbw_GBps otherwise")
    ap.add_argument("--merge", metavar="OUT.json",
                    help="merge the files (repeats of one configuration: medians per algorithm and size) into OUT")
    ap.add_argument("--plot", metavar="OUT.png", help="with --merge: plot the merged rows")
    ap.add_argument("--how", choices=("median", "best"), default="median",
                    help="with --merge: per-cell medians over the runs (default) or the least disturbed run")
    args = ap.parse_args(argv)
    if args.merge:
        from .report import write_json

        meta, rows = merge([read_json(p) for p in args.files], args.how)
        write_json(args.merge, meta, rows)
        if args.plot:
            from .plot import plot

            plot(args.plot, meta, rows)
        args.files = [args.merge]
    for path in args.files:
        meta, rows = read_json(path)
        metric = args.metric or ("time_us" if meta.get("mode") == "latency" else "busbw_GBps")
        print(f"### {path}\n")
        print(markdown(meta, rows, metric))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
