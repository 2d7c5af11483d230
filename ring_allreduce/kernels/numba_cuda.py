"""Numba CUDA reduction kernels: ``out = (a op b) [/ div]`` in one grid-stride pass on Numba device arrays.

The registry imports this module only when it first builds the kernel; nothing compiles before a kernel's first
launch, and the GPU is first touched when the kernel object is built. Works under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``,
where each block is a set of Python threads: the grid is capped to a few blocks there, the grid-stride loop covers
the rest, so results do not depend on the grid size).

Numerics match the NumPy reference: floats divide truly; float16 is loaded into float32, combined and divided
there, and rounded to float16 once on the store; integers are stored first (wrapping to the array's width as
NumPy's ``a op b`` does) and then floor-divided.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

_OPS = {"sum": 0, "prod": 1, "min": 2, "max": 3}
THREADS_PER_BLOCK = 128
MAX_BLOCKS_GPU = 4096  # grid-stride beyond this: enough blocks to fill any current GPU
MAX_BLOCKS_SIM = 2  # the simulator costs ~0.3 s per block of 128 threads


def _kind(dtype) -> str:
    """``"e"`` for float16 (float32 arithmetic), ``"f"`` for other floats, ``"i"`` for integers."""
    dt = np.dtype(dtype)
    return "e" if dt == np.float16 else ("f" if dt.kind == "f" else "i")


# Kernels are module-level so the simulator can swap ``cuda`` in their globals; @cuda.jit without signatures
# compiles on first launch. This module is imported only when the registry first builds the kernel.

@cuda.jit(device=True, inline=True)
def _combine(x, y, op):
    if op == 0:
        return x + y
    if op == 1:
        return x * y
    if op == 2:
        return x if (x < y or x != x or (x == y and math.copysign(1.0, x) < 0)) else y  # see kernels/__init__
    return x if (x > y or x != x or (x == y and math.copysign(1.0, x) > 0)) else y


@cuda.jit
def _reduce_float(a, b, out, op, d, has_div):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, out.size, stride):
        v = _combine(a[i], b[i], op)
        out[i] = v / d if has_div else v


@cuda.jit
def _reduce_half(a, b, out, op, d, has_div):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, out.size, stride):
        v = _combine(np.float32(a[i]), np.float32(b[i]), op)
        out[i] = v / d if has_div else v  # d is float32: one rounding to float16, on the store


@cuda.jit
def _reduce_int(a, b, out, op, d, has_div):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, out.size, stride):
        out[i] = _combine(a[i], b[i], op)
        if has_div:
            out[i] = out[i] // d  # re-read: floor-divide the wrapped value, as NumPy does


@cuda.jit
def _scale_float(x, out, d):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, out.size, stride):
        out[i] = x[i] / d


@cuda.jit
def _scale_half(x, out, d):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, out.size, stride):
        out[i] = np.float32(x[i]) / d


@cuda.jit
def _scale_int(x, out, d):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, out.size, stride):
        out[i] = x[i] // d


#: dtype kind -> (reduce, scale)
_KERNELS = {"f": (_reduce_float, _scale_float), "e": (_reduce_half, _scale_half), "i": (_reduce_int, _scale_int)}


class NumbaCudaKernel:
    """Fused reduce/scale on Numba CUDA device arrays (see the module docstring for the numerics)."""

    name = "numba_cuda"
    backend = "numba_cuda"

    def __init__(self):
        from numba import config

        self.simulator = bool(config.ENABLE_CUDASIM)
        if not self.simulator and not cuda.is_available():
            raise RuntimeError("Numba sees no CUDA GPU/driver (set NUMBA_ENABLE_CUDASIM=1 for the CPU simulator)")
        self.max_blocks = MAX_BLOCKS_SIM if self.simulator else MAX_BLOCKS_GPU

    def _grid(self, n: int):
        return min(self.max_blocks, -(-n // THREADS_PER_BLOCK)), THREADS_PER_BLOCK

    @staticmethod
    def _divisor(dtype, div):
        # float16 divides in float32; others in their own type (so float32 stays float32 on the GPU)
        return np.float32(div) if dtype == np.float16 else np.dtype(dtype).type(div)

    def reduce(self, a, b, out, op, div=None):
        n = out.size
        if n == 0:
            return
        has_div = div is not None and div != 1
        kernel, _ = _KERNELS[_kind(out.dtype)]
        blocks, threads = self._grid(n)
        kernel[blocks, threads](a, b, out, _OPS[op], self._divisor(out.dtype, div if has_div else 1), has_div)

    def scale(self, x, out, div):
        n = out.size
        if n == 0:
            return
        if div == 1:
            if out is not x:
                self.copy(out, x)
            return
        _, kernel = _KERNELS[_kind(out.dtype)]
        blocks, threads = self._grid(n)
        kernel[blocks, threads](x, out, self._divisor(out.dtype, div))

    def copy(self, dst, src):
        dst.copy_to_device(src)

    def empty(self, n, dtype):
        return cuda.device_array(n, dtype=dtype)

    def synchronize(self):
        cuda.synchronize()
