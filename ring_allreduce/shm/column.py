"""The reduction both node-aware paths share: one column of every local rank's input, in local-rank order."""
from __future__ import annotations

from ..algorithms._common import scratch
from . import settings


def reduce_column(ins, out, pushes, op, kernel, div=None, seg_bytes=None):
    """``out = ins[0] op ins[1] op ... op ins[-1]`` (left to right, ``div`` once at the end), then copy to ``pushes``.

    ``out`` may alias one of ``ins`` and ``pushes`` may alias later ones: each segment is read in full first.
    """
    m = out.size
    if m == 0:
        return
    if len(ins) == 1:
        if div is not None and div != 1:
            kernel.scale(ins[0], out, div)
        elif out is not ins[0]:
            kernel.copy(out, ins[0])
        for o in pushes:
            kernel.copy(o, out)
        return
    seg = max(1024, (seg_bytes or settings.SEGMENT_BYTES) // out.itemsize)
    if len(ins) == 2 and not pushes:
        seg = m
    acc = scratch(kernel, min(seg, m), out.dtype, slot=7) if len(ins) > 2 else None
    last = len(ins) - 1
    for a in range(0, m, seg):
        b = min(a + seg, m)
        o = out[a:b]
        if acc is None:
            kernel.reduce(ins[0][a:b], ins[1][a:b], o, op, div)
        else:
            t = acc[: b - a]
            kernel.reduce(ins[0][a:b], ins[1][a:b], t, op, None)
            for q in range(2, last):
                kernel.reduce(t, ins[q][a:b], t, op, None)
            kernel.reduce(t, ins[last][a:b], o, op, div)
        for dst in pushes:
            kernel.copy(dst[a:b], o)


def fence(windows) -> None:
    for w in windows:
        w.sync()
