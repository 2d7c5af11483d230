"""Numba CPU compression kernels: single-pass fused loops where NumPy needs temporaries and several passes.

Same conventions and results as :mod:`.codec_numpy` (the reference). Functions compile on first call
(``cache=True``, no eager signatures), so importing this module compiles nothing. Only the kernels that beat NumPy
are Numba here (sign and int8 decoding with accumulation, QSGD quantization, scatter-add: 1.3-5x); the others are
NumPy's, which were as fast or faster (see the end of this module).
"""
from __future__ import annotations

import numpy as np

from . import codec_numpy as _ref

name = "numba"
backend = "numpy"

_jit = {}


def _compiled():
    """Compile (once) and return the jitted loops; numba is imported only here."""
    if _jit:
        return _jit
    from numba import njit

    @njit(cache=True)
    def sign_decode(bits, n, scale, out, add):
        for i in range(n):
            v = -scale if (bits[i >> 3] >> (i & 7)) & 1 else scale
            if add:
                out[i] += v
            else:
                out[i] = v

    @njit(cache=True)
    def int8_decode(q, scale, out, add):
        for i in range(q.size):
            v = np.float32(q[i]) * scale
            if add:
                out[i] += v
            else:
                out[i] = v

    @njit(cache=True)
    def qsgd_quantize(x, norms, s, chunk, u, levels):
        for c in range(norms.size):
            mult = np.float32(s) / norms[c] if norms[c] > 0 else np.float32(0)
            for i in range(c * chunk, min((c + 1) * chunk, x.size)):
                v = x[i]
                m = np.floor(np.float32(abs(v)) * mult + np.float32(u[i]))
                if m > s:
                    m = s
                levels[i] = np.int8(-m if v < 0 else m)

    @njit(cache=True)
    def scatter(idx, vals, out, add):
        if not add:
            out[:] = 0
        for j in range(idx.size):
            out[idx[j]] += vals[j]

    _jit.update(sign_decode=sign_decode, int8_decode=int8_decode, qsgd_quantize=qsgd_quantize, scatter=scatter)
    return _jit


def sign_decode(bits, n, scale, out, add=False):
    _compiled()["sign_decode"](bits, n, out.dtype.type(scale), out, add)
    return out


def int8_decode(q, scale, out, add=False):
    _compiled()["int8_decode"](q, np.float32(scale), out, add)
    return out


def qsgd_encode(x, s, u, chunk):
    # the norms are NumPy's (one vectorized pass), so the levels are bitwise those of the reference
    norms = _ref.qsgd_norms(x, chunk)
    levels = np.empty(x.size, np.int8)
    _compiled()["qsgd_quantize"](x, norms, np.float32(s), chunk, u, levels)
    return levels, norms


# NumPy wins or ties these (``python benchmarks/compression.py --kernels``: 400k float32, one thread): packbits
# and the vectorized abs-max/rint match a per-element loop, a per-chunk Numba QSGD decode was 1.5x slower than
# NumPy's three vectorized passes, and argpartition is introselect in C
sign_encode = _ref.sign_encode
int8_encode = _ref.int8_encode
qsgd_decode = _ref.qsgd_decode
topk_indices = _ref.topk_indices
gather = _ref.gather


def scatter(idx, vals, out, add=False):
    _compiled()["scatter"](idx, vals.astype(out.dtype, copy=False), out, add)
    return out
