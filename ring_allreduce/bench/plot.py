"""Plot benchmark rows, one line per algorithm, log axes, readable at a glance.

Bandwidth runs: bus bandwidth and time per call against message size. Latency runs (and p = 1, where nothing is
communicated): time per call and time relative to native ``mpi``, so every algorithm (``check`` included) is in
both panels. Sizes read B/KiB/MiB, log axes carry 1-2-5 ticks, one legend sits outside the panels, an algorithm
keeps its colour in every panel and every plot (:func:`colors`), and the file format follows the extension.

matplotlib is imported only when a plot is made (``pip install ring-allreduce[plot]``), with the Agg backend so
it works on cluster nodes without a display.
"""
from __future__ import annotations

import os
import re
import tempfile
import zlib
from typing import Dict, Iterable, List, Optional

from ..usage import UsageError

#: extensions written (matplotlib's Agg, PDF and SVG backends)
FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")
#: fixed colours for the usual names (matplotlib's tab10/tab20 hex values), so plots compare across runs
_KNOWN = ("ring", "rabenseifner", "tree", "recursive_doubling", "shm", "auto", "mpi", "hierarchical", "gloo", "check")
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#000000", "#e377c2", "#7f7f7f",
            "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5")


def check_format(path: str) -> str:
    """The format of ``path`` from its extension; :class:`UsageError` for one matplotlib cannot write here."""
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext not in FORMATS:
        raise UsageError(f"--plot {path}: unknown image format {ext or '(no extension)'!r}; "
                         f"use one of .{', .'.join(FORMATS)}")
    return "jpeg" if ext == "jpg" else ext


def color(name: str) -> str:
    """The colour of algorithm ``name``: fixed for the usual names, a stable hash of the name otherwise.

    ``NAME+check`` shares NAME's colour (it is drawn dashed).
    """
    base = name.split("+")[0]
    if base in _KNOWN:
        return _PALETTE[_KNOWN.index(base)]
    return _PALETTE[len(_KNOWN) + zlib.crc32(base.encode()) % (len(_PALETTE) - len(_KNOWN))]


def colors(names: Iterable[str]) -> Dict[str, str]:
    return {n: color(n) for n in names}


def human_bytes(n: float) -> str:
    """``4194304`` -> ``4 MiB``; ``1536`` -> ``1.5 KiB``; ``8`` -> ``8 B``."""
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return f"{n / div:g} {unit}"
    return f"{n:g} B"


def short_library(text: str) -> str:
    """A short MPI name from ``MPI_Get_library_version``'s text: ``MPICH 5.0.2``, ``Open MPI 5.0.11``."""
    text = text or ""
    m = re.search(r"MPICH Version:\s*(\S+)", text)
    if m:
        return f"MPICH {m.group(1)}"
    m = re.search(r"Open MPI v?(\d[\w.]*)", text)
    if m:
        return f"Open MPI {m.group(1)}"
    m = re.search(r"(Intel\(R\) MPI Library [\d.]+|MVAPICH2? [\d.]+)", text)
    if m:
        return m.group(1)
    first = text.strip().splitlines()[0] if text.strip() else ""
    return " ".join(first.split())[:30]


def title_for(meta: dict) -> str:
    where = "in place" if meta.get("inplace", True) else "out of place"
    parts = [f"allreduce {meta.get('dtype')} {meta.get('op')}", f"p={meta.get('p')}", where]
    lib = short_library(meta.get("mpi_library", ""))
    if lib:
        parts.append(lib + (f", thread {meta['thread_level']}" if meta.get("thread_level") else ""))
    return ", ".join(parts)


def _style(name: str) -> dict:
    dashed = name in ("mpi", "gloo") or name.endswith("+check") or name == "check"
    return dict(color=color(name), marker="o", markersize=3, linewidth=2.2 if name == "mpi" else 1.4,
                linestyle="--" if dashed else "-")


def _subs(lo: float, hi: float) -> tuple:
    """Major tick multiples per decade so a log axis spanning ``lo..hi`` gets at least 3-4 labels."""
    import math

    decades = math.log10(hi / lo) if lo > 0 and hi > lo else 1.0
    if decades < 0.8:
        return (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)
    if decades < 1.6:
        return (1.0, 2.0, 3.0, 5.0, 7.0)
    if decades < 3.5:
        return (1.0, 2.0, 5.0)
    return (1.0,)


def _log_axis(axis, ticker, sizes: bool, span=(1.0, 10.0)) -> None:
    if sizes:
        axis.set_major_locator(ticker.LogLocator(base=2, numticks=12))
        axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: human_bytes(v)))
        axis.set_minor_locator(ticker.NullLocator())
    else:
        axis.set_major_locator(ticker.LogLocator(base=10, subs=_subs(*span), numticks=15))
        axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_locator(ticker.LogLocator(base=10, subs="auto", numticks=15))
        axis.set_minor_formatter(ticker.NullFormatter())


def panels(meta: dict, rows: List[dict]) -> List[str]:
    """Which metrics to draw: ``busbw`` + ``time``, or ``time`` + ``ratio`` (latency mode, p = 1, no bandwidth)."""
    bandwidth = meta.get("p", 2) != 1 and meta.get("mode") != "latency" and all(
        r["busbw_GBps"] > 0 for r in rows if r["algorithm"] != "check")
    if bandwidth:
        return ["busbw", "time"]
    return ["time", "ratio"] if any(r["algorithm"] == "mpi" for r in rows) else ["time"]


def figure(meta: dict, rows: List[dict], title: Optional[str] = None):
    """Draw the panels into a new matplotlib figure and return it (the caller closes it)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    by_alg: dict = {}
    for r in rows:
        by_alg.setdefault(r["algorithm"], []).append(r)
    mpi_time = {r["size_bytes"]: r["time_us"] for r in by_alg.get("mpi", [])}
    kinds = panels(meta, rows)
    labels = {"busbw": "bus bandwidth (GB/s)", "time": "time per call (µs)", "ratio": "time / native mpi time"}
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds) + 1.8, 4.6), squeeze=False)
    axes = axes[0]
    for name, rs in by_alg.items():
        rs = sorted(rs, key=lambda r: r["size_bytes"])
        for ax, kind in zip(axes, kinds):
            if kind == "busbw":
                xs = [r["size_bytes"] for r in rs if r["busbw_GBps"] > 0]
                ys = [r["busbw_GBps"] for r in rs if r["busbw_GBps"] > 0]
            elif kind == "time":
                xs, ys = [r["size_bytes"] for r in rs], [r["time_us"] for r in rs]
            else:
                pts = [(r["size_bytes"], r["time_us"] / mpi_time[r["size_bytes"]]) for r in rs
                       if mpi_time.get(r["size_bytes"])]
                xs, ys = [x for x, _ in pts], [y for _, y in pts]
            if xs:
                ax.plot(xs, ys, label=name, **_style(name))
    for ax, kind in zip(axes, kinds):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        _log_axis(ax.xaxis, ticker, sizes=True)
        _log_axis(ax.yaxis, ticker, sizes=False, span=ax.get_ylim())
        ax.set_xlabel("message size")
        ax.set_ylabel(labels[kind])
        ax.grid(True, which="major", alpha=0.35)
        ax.grid(True, which="minor", alpha=0.12)
        if kind == "ratio":
            ax.axhline(1.0, color="#000000", linewidth=0.8)
        for lab in ax.get_xticklabels():
            lab.set_rotation(30)
    handles, names = [], []
    for ax in axes:  # one legend for all panels (an algorithm has one colour everywhere), outside the data
        for h, n in zip(*ax.get_legend_handles_labels()):
            if n not in names:
                handles.append(h)
                names.append(n)
    fig.legend(handles, names, loc="center right", fontsize=8, frameon=False)
    fig.suptitle(title or title_for(meta), fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 1.6 / fig.get_figwidth(), 1))
    return fig


def plot(path: str, meta: dict, rows: List[dict], title: Optional[str] = None) -> str:
    """Write the plot to ``path`` in the format its extension names; return ``path``."""
    fmt = check_format(path)
    fig = figure(meta, rows, title)
    import matplotlib.pyplot as plt

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="." + fmt, dir=folder)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, format=fmt)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
