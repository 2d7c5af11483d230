"""Write benchmark rows: an nccl-tests style text table, JSON (``{"meta", "rows"}``) and CSV; read JSON back.

Files are written atomically (temporary file in the same folder, then ``os.replace``).
"""
from __future__ import annotations

import csv
import io
import json
from typing import Iterable, List

from .._io import atomic_write_text as _atomic_write
from .sweep import ROW_FIELDS


def human_size(nbytes: int) -> str:
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= div and nbytes % div == 0:
            return f"{nbytes // div} {unit}"
    return f"{nbytes} B"


def header_lines(meta: dict) -> List[str]:
    hosts = ", ".join(f"{h} ({n} rank{'s' if n > 1 else ''})" for h, n in meta.get("hosts", {}).items())
    where = "in-place" if meta.get("inplace", True) else "out-of-place"
    lines = [
        f"# {meta.get('tool', 'ring-allreduce bench')} {meta.get('version', '')}: allreduce, {meta.get('mode')} mode, "
        f"{where}",
        f"# MPI: {meta.get('mpi_library')} (MPI {meta.get('mpi_version')}, mpi4py {meta.get('mpi4py')}, "
        f"thread level {meta.get('thread_level')})",
        f"# p={meta.get('p')} hosts: {hosts}",
        f"# dtype={meta.get('dtype')} op={meta.get('op')} iters={meta.get('iters')} warmup={meta.get('warmup')}"
        + (f" repeats={meta.get('repeats')}" if meta.get("repeats") else "")
        + f" check={'on' if meta.get('check') else 'off'}"
        f" agreement-check={'on' if meta.get('agreement_check') else 'off'}"
        + (f" kernel={meta['kernel']}" if meta.get("kernel") else ""),
        f"# time: {meta.get('timing')}; {meta.get('busbw')}",
    ]
    if meta.get("load_avg"):
        lines.append(f"# node: {meta.get('cpus')} CPUs, load average at start "
                     + " ".join(f"{v:.2f}" for v in meta["load_avg"]))
    for name, reason in (meta.get("skipped") or {}).items():
        lines.append(f"# skipped {name}: {reason}")
    return lines


_COLS = (("size(B)", 12), ("count", 11), ("algorithm", 22), ("time(us)", 11), ("min(us)", 11), ("max(us)", 11),
         ("algbw(GB/s)", 12), ("busbw(GB/s)", 12), ("#wrong", 7))


def format_row(row: dict, bandwidth: bool = True) -> str:
    """One table line; ``bandwidth=False`` (p = 1: nothing is communicated) shows ``-`` for algbw and busbw."""
    wrong = "N/A" if row.get("wrong") is None else str(row["wrong"])
    bw = (f"{row['algbw_GBps']:.3f}", f"{row['busbw_GBps']:.3f}") if bandwidth else ("-", "-")
    vals = (str(row["size_bytes"]), str(row["count"]), row["algorithm"], f"{row['time_us']:.2f}",
            f"{row['time_us_min']:.2f}", f"{row['time_us_max']:.2f}") + bw + (wrong,)
    return " ".join(v.rjust(w) if i != 2 else "  " + v.ljust(w - 2) for i, (v, (_, w)) in enumerate(zip(vals, _COLS)))


def column_header() -> str:
    return "#" + " ".join(n.rjust(w) if i != 2 else "  " + n.ljust(w - 2) for i, (n, w) in enumerate(_COLS))[1:]


def average_busbw(rows: Iterable[dict]) -> dict:
    """Average busbw per algorithm, in the rows' order."""
    sums: dict = {}
    for r in rows:
        s = sums.setdefault(r["algorithm"], [0.0, 0])
        s[0] += r["busbw_GBps"]
        s[1] += 1
    return {a: s[0] / s[1] for a, s in sums.items()}


def footer_lines(rows: List[dict], bandwidth: bool = True) -> List[str]:
    lines = []
    if bandwidth:
        lines.append("# Avg bus bandwidth (GB/s): "
                     + ", ".join(f"{a} {v:.3f}" for a, v in average_busbw(rows).items()))
    wrong = [r for r in rows if r.get("wrong")]
    lines.append(f"# Out of bounds values: {sum(r['wrong'] for r in wrong)} "
                 + ("ERROR" if wrong else "OK" if any(r.get("wrong") is not None for r in rows) else "(not checked)"))
    return lines


def format_table(meta: dict, rows: List[dict]) -> str:
    bandwidth = meta.get("p", 2) != 1
    lines = header_lines(meta) + ["#", column_header()]
    lines += [format_row(r, bandwidth) for r in rows]
    lines += footer_lines(rows, bandwidth)
    return "\n".join(lines) + "\n"


def to_json(meta: dict, rows: List[dict]) -> str:
    clean = [{k: r[k] for k in ROW_FIELDS} for r in rows]
    return json.dumps({"meta": meta, "rows": clean}, indent=1, sort_keys=False) + "\n"


def write_json(path: str, meta: dict, rows: List[dict]) -> None:
    _atomic_write(path, to_json(meta, rows))


def read_json(path: str) -> tuple:
    """Return ``(meta, rows)`` from a file written by :func:`write_json` (validated against the row schema)."""
    with open(path) as fh:
        doc = json.load(fh)
    if not isinstance(doc, dict) or "meta" not in doc or not isinstance(doc.get("rows"), list):
        raise ValueError(f"{path}: not a benchmark result (expected {{'meta': ..., 'rows': [...]}})")
    for i, r in enumerate(doc["rows"]):
        missing = [k for k in ROW_FIELDS if k not in r]
        if missing:
            raise ValueError(f"{path}: row {i} lacks {missing}")
    return doc["meta"], doc["rows"]


def to_csv(meta: dict, rows: List[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(("p", "inplace", "mode", "thread_level") + ROW_FIELDS)
    for r in rows:
        w.writerow((meta.get("p"), meta.get("inplace"), meta.get("mode"), meta.get("thread_level"))
                   + tuple("" if r[k] is None else r[k] for k in ROW_FIELDS))
    return buf.getvalue()


def write_csv(path: str, meta: dict, rows: List[dict]) -> None:
    _atomic_write(path, to_csv(meta, rows))
