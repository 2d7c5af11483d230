"""The default kernel for NumPy arrays when Numba is installed: Numba where it measured faster, NumPy elsewhere.

Measured with ``benchmarks/kernels.py`` (rows and command in ``benchmarks/results/kernels.json``): on one thread a
NumPy ufunc is at least as fast as Numba for a plain ``a op b`` (hand-vectorized loops and a cheaper call: ~0.35 us
vs ~0.55 us at 4 KiB), so Numba brings two things only: the fused ``(a op b) / p`` of ``avg`` (one pass instead of
NumPy's two: 0.83-1.17x copy bandwidth vs 0.57-0.73x from 1 MiB to 64 MiB) and threads on large arrays when this
rank has more than one core (see ``numba_cpu``).
So: a division goes to Numba; a plain op goes to Numba when it will run threaded (kernel threads > 1 and at least
``parallel_min_bytes`` per operand), else to NumPy.

NumPy and Numba give the same bits for ``a op b`` and for ``(a op b) / div`` on float32/float64 and integers
(each rounds ``a op b`` to the dtype, then divides with one rounding; min/max pick the same operand on ties and
NaN), and float16 goes through NumPy either way, so the switch never makes ranks disagree (tested).
"""
from __future__ import annotations

from .numba_cpu import NumbaCpuKernel
from .numpy_kernels import _UFUNCS, HostKernel


class HostAutoKernel(HostKernel):
    """Dispatch each call to NumPy or Numba by size and fusion (see the module docstring)."""

    name = "auto"

    def __init__(self, threads: int | None = None, parallel_min_bytes: int | None = None):
        self.numba = NumbaCpuKernel(threads, parallel_min_bytes)
        self.threads = self.numba.threads
        # plain ops of at least this many bytes per operand run threaded on Numba; None: never (one thread)
        self.numba_from_bytes = self.numba.parallel_min_bytes if self.numba.threads > 1 else None

    def reduce(self, a, b, out, op, div=None):
        if (div is None or div == 1) and (self.numba_from_bytes is None or out.nbytes < self.numba_from_bytes) \
                and (op == "sum" or op == "prod"):  # min/max: Numba's one pass applies the signed-zero rule
            _UFUNCS[op](a, b, out=out)
        else:
            self.numba.reduce(a, b, out, op, div)

    def scale(self, x, out, div):
        self.numba.scale(x, out, div)  # one pass either way; threaded on large arrays
