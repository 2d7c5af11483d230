"""Numba CPU compression kernels: single-pass fused loops where NumPy needs temporaries and several passes.

Same conventions and results as :mod:`.compress_numpy` (the reference). Functions compile on first call
(``cache=True``, no eager signatures), so importing this module compiles nothing. Top-k selection stays NumPy's
``argpartition`` (introselect in C): a hand-written Numba selection did not beat it.
"""
from __future__ import annotations

import numpy as np

from . import compress_numpy as _ref

name = "numba"
backend = "numpy"

_jit = {}


def _compiled():
    """Compile (once) and return the jitted loops; numba is imported only here."""
    if _jit:
        return _jit
    from numba import njit

    @njit(cache=True)
    def sign_encode(x, bits):
        n = x.size
        acc = 0.0
        for b in range(bits.size):
            byte = 0
            base = b * 8
            for j in range(min(8, n - base)):
                v = x[base + j]
                if v < 0:
                    byte |= 1 << j
                    acc -= v
                else:
                    acc += v
            bits[b] = byte
        return acc

    @njit(cache=True)
    def sign_decode(bits, n, scale, out, add):
        for i in range(n):
            v = -scale if (bits[i >> 3] >> (i & 7)) & 1 else scale
            if add:
                out[i] += v
            else:
                out[i] = v

    @njit(cache=True)
    def absmax(x):
        m = 0.0
        for i in range(x.size):
            a = abs(x[i])
            if a > m:
                m = a
        return m

    @njit(cache=True)
    def int8_encode(x, scale, q):
        for i in range(x.size):
            v = np.rint(np.float32(x[i]) / scale)  # divide, not multiply by 1/scale: bitwise equal to NumPy's
            if v > 127:
                v = 127
            elif v < -127:
                v = -127
            q[i] = np.int8(v)

    @njit(cache=True)
    def int8_decode(q, scale, out, add):
        for i in range(q.size):
            v = np.float32(q[i]) * scale
            if add:
                out[i] += v
            else:
                out[i] = v

    @njit(cache=True)
    def sumsq(x):
        acc = 0.0
        for i in range(x.size):
            acc += np.float64(x[i]) * np.float64(x[i])
        return acc

    @njit(cache=True)
    def qsgd_encode(x, mult, s, u, levels):
        for i in range(x.size):
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

    _jit.update(sign_encode=sign_encode, sign_decode=sign_decode, absmax=absmax, int8_encode=int8_encode,
                int8_decode=int8_decode, sumsq=sumsq, qsgd_encode=qsgd_encode, scatter=scatter)
    return _jit


def sign_encode(x):
    k = _compiled()
    bits = np.empty((x.size + 7) // 8, np.uint8)
    acc = k["sign_encode"](x, bits)
    return bits, np.float32(acc / x.size if x.size else 0.0)


def sign_decode(bits, n, scale, out, add=False):
    _compiled()["sign_decode"](bits, n, out.dtype.type(scale), out, add)
    return out


def int8_encode(x):
    k = _compiled()
    scale = np.float32(k["absmax"](x) / 127.0) if x.size else np.float32(0)
    q = np.zeros(x.size, np.int8)
    if scale != 0:
        k["int8_encode"](x, scale, q)
    return q, scale


def int8_decode(q, scale, out, add=False):
    _compiled()["int8_decode"](q, np.float32(scale), out, add)
    return out


def qsgd_encode(x, s, u):
    k = _compiled()
    norm = np.float32(np.sqrt(k["sumsq"](x))) if x.size else np.float32(0)
    levels = np.zeros(x.size, np.int8)
    if norm != 0:
        k["qsgd_encode"](x, np.float32(s / norm), np.float32(s), u, levels)
    return levels, norm


def qsgd_decode(levels, norm, s, out, add=False):
    # the same loop as int8 decoding, with scale norm / s
    _compiled()["int8_decode"](levels, np.float32(np.float32(norm) / np.float32(s)), out, add)
    return out


topk_indices = _ref.topk_indices
gather = _ref.gather


def scatter(idx, vals, out, add=False):
    _compiled()["scatter"](idx, vals.astype(out.dtype, copy=False), out, add)
    return out
