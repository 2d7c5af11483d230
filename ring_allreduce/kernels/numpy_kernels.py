"""The NumPy reference reduction kernel (two passes when ``div`` is given; the Numba kernel fuses them)."""
from __future__ import annotations

import numpy as np

_UFUNCS = {"sum": np.add, "prod": np.multiply, "min": np.minimum, "max": np.maximum}
_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def apply(op: str, a, b, out) -> None:
    """``out = a op b`` with NumPy's ufuncs and the package's min/max semantics.

    min/max: a NaN in either operand gives NaN (as ``np.minimum``); of +0.0 and -0.0, ``min`` gives -0.0 and
    ``max`` +0.0 whatever the operand order (``np.minimum`` leaves that to the SIMD unit). ``out`` may alias.
    """
    if (op == "min" or op == "max") and out.dtype.kind == "f":
        zeros = (a == 0) & (b == 0)  # the only ties whose bits differ; read before out (maybe a or b) is written
        if zeros.any():
            u = _UINT[out.dtype.itemsize]
            ab, bb = a.view(u)[zeros], b.view(u)[zeros]
            fix = (ab | bb) if op == "min" else (ab & bb)  # sign bit set if either (min) / both (max) negative
            _UFUNCS[op](a, b, out=out)
            out.view(u)[zeros] = fix
            return
    _UFUNCS[op](a, b, out=out)


def divide(x: np.ndarray, out: np.ndarray, div: int) -> None:
    """``out = x / div`` for floats (float16 computed in float32, rounded once), ``x // div`` for integers."""
    if out.dtype.kind == "f":
        if out.dtype == np.float16:
            np.divide(x, np.float32(div), out=out, dtype=np.float32, casting="unsafe")
        else:
            np.divide(x, out.dtype.type(div), out=out)
    else:
        np.floor_divide(x, out.dtype.type(div), out=out)


class HostKernel:
    """What every kernel on NumPy arrays shares: copies, allocation, and no stream to wait for."""

    backend = "numpy"

    def copy(self, dst, src):
        np.copyto(dst, src)

    def empty(self, n, dtype):
        return np.empty(n, dtype=dtype)

    def synchronize(self):
        pass


class NumpyKernel(HostKernel):
    name = "numpy"

    def reduce(self, a, b, out, op, div=None):
        apply(op, a, b, out)
        if div is not None and div != 1:
            divide(out, out, div)

    def scale(self, x, out, div):
        if div == 1:
            if out is not x:
                np.copyto(out, x)
        else:
            divide(x, out, div)

