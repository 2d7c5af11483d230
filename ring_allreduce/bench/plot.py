"""Plot benchmark rows: bus bandwidth vs size and latency vs size, one line per algorithm, log axes.

matplotlib is imported only when a plot is made (``pip install ring-allreduce[plot]``), with the Agg backend so
it works on cluster nodes without a display.
"""
from __future__ import annotations

import os
import tempfile
from typing import List, Optional


def plot(path: str, meta: dict, rows: List[dict], title: Optional[str] = None) -> str:
    """Write a two-panel PNG (busbw and time vs message size) to ``path``; return ``path``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    by_alg: dict = {}
    for r in rows:
        by_alg.setdefault(r["algorithm"], []).append(r)
    fig, (ax_bw, ax_t) = plt.subplots(1, 2, figsize=(12, 4.8))
    for name, rs in by_alg.items():
        rs = sorted(rs, key=lambda r: r["size_bytes"])
        sizes = [r["size_bytes"] for r in rs]
        style = dict(marker="o", markersize=3, linewidth=2.2 if name == "mpi" else 1.4,
                     linestyle="--" if name in ("mpi", "gloo") else "-")
        if any(r["busbw_GBps"] > 0 for r in rs):
            ax_bw.plot(sizes, [max(r["busbw_GBps"], 1e-6) for r in rs], label=name, **style)
        ax_t.plot(sizes, [r["time_us"] for r in rs], label=name, **style)
    where = "in-place" if meta.get("inplace", True) else "out-of-place"
    title = title or (f"allreduce {meta.get('dtype')} {meta.get('op')}, p={meta.get('p')}, {where}, "
                      f"{meta.get('mpi_library', '')[:40]} (thread {meta.get('thread_level')})")
    for ax, ylabel in ((ax_bw, "bus bandwidth (GB/s)"), (ax_t, "time per call (µs)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("message size (bytes)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=folder)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
