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


# Vectorized sum / fused avg for float32 and float16 (the gradient dtypes): 16-byte loads and stores (float4, 8 halves)
# in a grid-stride loop. An ElementwiseKernel indexes one element per thread with scalar loads and moved about 60 % of
# a device copy's bytes per second on an H200 (float16: 30 %). Same numerics as the ElementwiseKernel above: float32
# adds then divides in float32; float16 converts to float32, adds, divides and rounds once (to nearest even).
_VECTOR_SRC = {"f": r"""
extern "C" __global__ void ra_vsum_f32(const float* a, const float* b, float* out, long long n, float d, int has_div) {
    long long stride = (long long)blockDim.x * gridDim.x;
    long long i0 = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long n4 = n / 4;
    const float4* a4 = reinterpret_cast<const float4*>(a);
    const float4* b4 = reinterpret_cast<const float4*>(b);
    float4* o4 = reinterpret_cast<float4*>(out);
    for (long long i = i0; i < n4; i += stride) {
        float4 x = a4[i], y = b4[i], r;
        r.x = x.x + y.x; r.y = x.y + y.y; r.z = x.z + y.z; r.w = x.w + y.w;
        if (has_div) { r.x = r.x / d; r.y = r.y / d; r.z = r.z / d; r.w = r.w / d; }
        o4[i] = r;
    }
    for (long long i = n4 * 4 + i0; i < n; i += stride) {
        float v = a[i] + b[i];
        out[i] = has_div ? v / d : v;
    }
}
""", "e": r"""
#include <cuda_fp16.h>
extern "C" __global__ void ra_vsum_f16(const __half* a, const __half* b, __half* out, long long n, float d, int has_div) {
    long long stride = (long long)blockDim.x * gridDim.x;
    long long i0 = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long n8 = n / 8;
    const uint4* a8 = reinterpret_cast<const uint4*>(a);
    const uint4* b8 = reinterpret_cast<const uint4*>(b);
    uint4* o8 = reinterpret_cast<uint4*>(out);
    for (long long i = i0; i < n8; i += stride) {
        uint4 x = a8[i], y = b8[i], r;
        const __half* xh = reinterpret_cast<const __half*>(&x);
        const __half* yh = reinterpret_cast<const __half*>(&y);
        __half* rh = reinterpret_cast<__half*>(&r);
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            float v = __half2float(xh[k]) + __half2float(yh[k]);
            if (has_div) v = v / d;
            rh[k] = __float2half_rn(v);
        }
        o8[i] = r;
    }
    for (long long i = n8 * 8 + i0; i < n; i += stride) {
        float v = __half2float(a[i]) + __half2float(b[i]);
        if (has_div) v = v / d;
        out[i] = __float2half_rn(v);
    }
}
"""}
#: dtype char -> cupy.RawKernel, or the reason it could not be built (then the ElementwiseKernel runs); filled lazily
VECTOR_KERNELS: dict = {}
_VECTOR_NAMES = {"f": "ra_vsum_f32", "e": "ra_vsum_f16"}
_THREADS = 256


def _vector_kernel(char: str):
    """The vectorized sum kernel for dtype ``char`` (``"f"``/``"e"``), or None when NVRTC could not build it."""
    k = VECTOR_KERNELS.get(char)
    if k is None:
        try:
            module = cupy.RawModule(code=_VECTOR_SRC[char])
            k = module.get_function(_VECTOR_NAMES[char])
        except Exception as e:  # noqa: BLE001 - e.g. cuda_fp16.h not found by NVRTC: the scalar kernel still works
            k = f"{type(e).__name__}: {e}"
        VECTOR_KERNELS[char] = k
    return k if not isinstance(k, str) else None


def _vectorizable(a, b, out) -> bool:
    """All three contiguous, the same length and 16-byte aligned (the vector loads need it)."""
    n = out.size
    for x in (a, b, out):
        if not isinstance(x, cupy.ndarray) or x.size != n or not x.flags.c_contiguous or x.data.ptr % 16:
            return False
    return True


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
        char = out.dtype.char
        if op == "sum" and char in _VECTOR_NAMES and a.dtype == b.dtype == out.dtype and _vectorizable(a, b, out):
            k = _vector_kernel(char)
            if k is not None:
                n = out.size
                blocks = min(max(1, -(-n // (_THREADS * (4 if char == "f" else 8)))), 1 << 16)
                k((blocks,), (_THREADS,), (a, b, out, np.int64(n), np.float32(div if has_div else 1), np.int32(has_div)))
                return
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
