"""The NumPy reference reduction kernel (two passes when ``div`` is given; the Numba kernel fuses them)."""
from __future__ import annotations

import numpy as np

_UFUNCS = {"sum": np.add, "prod": np.multiply, "min": np.minimum, "max": np.maximum}


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
        _UFUNCS[op](a, b, out=out)
        if div is not None and div != 1:
            divide(out, out, div)

    def scale(self, x, out, div):
        if div == 1:
            if out is not x:
                np.copyto(out, x)
        else:
            divide(x, out, div)

