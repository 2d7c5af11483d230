"""CuPy reduction kernels: ``out = (a op b) [/ div]`` as one fused ``ElementwiseKernel`` per variant.

The registry imports this module only when it first builds the kernel (so importing ``ring_allreduce`` never
imports CuPy). Kernels are named module-level objects made by a memoized factory and kept in a dict keyed by
variant; CuPy compiles each one per dtype on its first launch.

Numerics match the NumPy reference: floats divide truly; float16 is combined and divided in float32 and rounded to
float16 once on the store; integers are combined in their own width (wrapping as NumPy's do) and floor-divided.
min/max propagate NaN like ``np.minimum``/``np.maximum`` (CUDA's ``fminf``/``fmaxf`` would drop it), and
min(-0.0, +0.0) = -0.0, max = +0.0 in either order (the package's semantics, see ``kernels/__init__``).
"""
from __future__ import annotations

import cupy
import numpy as np

_COMBINE = {
    "sum": "x + y",
    "prod": "x * y",
    # of equal operands (+0.0/-0.0) min takes the negative and max the positive one (copysign on the double)
    "min": "((x < y || x != x || (x == y && copysign(1.0, (double)x) < 0)) ? x : y)",
    "max": "((x > y || x != x || (x == y && copysign(1.0, (double)x) > 0)) ? x : y)",
}
# C++ '/' truncates toward zero: step down when the remainder is non-zero and the signs differ (floor division)
_FLOOR_DIV = "C q = v / d; if ((v % d != 0) && ((v < 0) != (d < 0))) { q -= 1; }"

#: (op, kind, fused division) -> cupy.ElementwiseKernel; filled by _reduce_kernel
REDUCE_KERNELS: dict = {}
#: kind -> cupy.ElementwiseKernel; filled by _scale_kernel
SCALE_KERNELS: dict = {}


def _kind(dtype) -> str:
    """``"e"`` for float16 (float32 arithmetic), ``"f"`` for other floats, ``"i"`` for integers."""
    dt = np.dtype(dtype)
    return "e" if dt == np.float16 else ("f" if dt.kind == "f" else "i")


def _compute_type(kind: str) -> str:
    return "float" if kind == "e" else "T"


def _reduce_kernel(op: str, kind: str, has_div: bool):
    """Return (building once) the fused reduce kernel for ``op`` on dtype ``kind``, dividing when ``has_div``."""
    key = (op, kind, has_div)
    kernel = REDUCE_KERNELS.get(key)
    if kernel is None:
        c = _compute_type(kind)
        body = [f"typedef {c} C;", "C x = (C)a; C y = (C)b;", f"C v = (C)({_COMBINE[op]});"]
        if not has_div:
            body.append("out = (T)v;")
        elif kind == "i":
            body += [_FLOOR_DIV, "out = (T)q;"]
        else:
            body.append("out = (T)(v / d);")
        params = "T a, T b"
        if has_div:
            params += ", float32 d" if kind == "e" else ", T d"
        name = f"ring_allreduce_{op}{'_div' if has_div else ''}_{kind}"
        kernel = REDUCE_KERNELS[key] = cupy.ElementwiseKernel(params, "T out", "\n".join(body), name)
    return kernel


def _scale_kernel(kind: str):
    """Return (building once) the kernel ``out = x / d`` (floor division for integers)."""
    kernel = SCALE_KERNELS.get(kind)
    if kernel is None:
        c = _compute_type(kind)
        body = [f"typedef {c} C;", "C v = (C)x;"]
        body += [_FLOOR_DIV, "out = (T)q;"] if kind == "i" else ["out = (T)(v / d);"]
        params = "T x, float32 d" if kind == "e" else "T x, T d"
        kernel = SCALE_KERNELS[kind] = cupy.ElementwiseKernel(params, "T out", "\n".join(body),
                                                              f"ring_allreduce_scale_{kind}")
    return kernel


class CupyKernel:
    """Fused reduce/scale on CuPy arrays (on the current stream; ``synchronize`` waits for it)."""

    name = "cupy"
    backend = "cupy"

    def __init__(self):
        try:
            available = cupy.cuda.is_available()
        except Exception as e:  # noqa: BLE001 - e.g. CUDARuntimeError for a driver too old
            raise RuntimeError(f"CuPy {cupy.__version__} cannot use CUDA: {e}") from e
        if not available:
            raise RuntimeError(f"CuPy {cupy.__version__} is installed but sees no CUDA GPU")

    @staticmethod
    def _divisor(dtype, div):
        return np.float32(div) if dtype == np.float16 else np.dtype(dtype).type(div)

    def reduce(self, a, b, out, op, div=None):
        if out.size == 0:
            return
        has_div = div is not None and div != 1
        kind = _kind(out.dtype)
        if has_div:
            _reduce_kernel(op, kind, True)(a, b, self._divisor(out.dtype, div), out)
        else:
            _reduce_kernel(op, kind, False)(a, b, out)

    def scale(self, x, out, div):
        if out.size == 0:
            return
        if div == 1:
            if out is not x:
                self.copy(out, x)
            return
        _scale_kernel(_kind(out.dtype))(x, self._divisor(out.dtype, div), out)

    def copy(self, dst, src):
        cupy.copyto(dst, src)

    def empty(self, n, dtype):
        return cupy.empty(n, dtype=dtype)

    def synchronize(self):
        cupy.cuda.get_current_stream().synchronize()
