"""Numba CPU kernels for the fused parts of the models (one pass where NumPy needs several).

Same interface as :class:`ring_allreduce.kernels.mlp_numpy.NumpyModelKernel`; matrix products stay on NumPy (BLAS).
Compiled on first call (no eager signatures), cached on disk.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from .mlp_numpy import NumpyModelKernel


@numba.njit(cache=True, fastmath=False)
def _softmax_xent(logits, y, scale, delta):
    n, k = logits.shape
    loss = 0.0
    correct = 0
    for i in range(n):
        m = logits[i, 0]
        am = 0
        for j in range(1, k):
            if logits[i, j] > m:
                m = logits[i, j]
                am = j
        s = 0.0
        for j in range(k):
            e = math.exp(logits[i, j] - m)
            delta[i, j] = e
            s += e
        t = y[i]
        loss += math.log(s) + m - logits[i, t]
        if am == t:
            correct += 1
        f = scale / s
        for j in range(k):
            delta[i, j] = delta[i, j] * f
        delta[i, t] -= scale
    return loss, correct


@numba.njit(cache=True)
def _relu_backward(delta, h, out):
    d = delta.reshape(-1)
    hh = h.reshape(-1)
    o = out.reshape(-1)
    for i in range(d.size):
        o[i] = d[i] if hh[i] > 0 else 0.0


class NumbaModelKernel(NumpyModelKernel):
    name = "numba"

    def relu_backward(self, delta, h, out):
        _relu_backward(delta, h, out)

    def softmax_xent(self, logits, y, scale, delta):
        if logits.shape[0] == 0:
            return 0.0, 0
        loss, correct = _softmax_xent(logits, y, scale, delta)
        return float(loss), int(correct)
