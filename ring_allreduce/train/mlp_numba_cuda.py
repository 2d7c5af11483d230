"""Numba CUDA kernels for the fused model parts (module-level so the CUDA simulator can run them on a CPU).

Imported only when a ``cupy-numba`` kernel or a test asks for it; ``cuda.jit`` without signatures compiles on the
first launch. Works on any CUDA array (CuPy via ``__cuda_array_interface__``) and, under the simulator, on NumPy.
"""
from __future__ import annotations

import math

from numba import cuda

THREADS = 128


def blocks(n: int) -> int:
    return max(1, (n + THREADS - 1) // THREADS)


@cuda.jit
def softmax_xent(logits, y, scale, delta, row_loss, row_correct):
    """Row ``i``: ``delta = (softmax - onehot) * scale``; its cross-entropy and whether its arg-max is right."""
    i = cuda.grid(1)
    if i >= logits.shape[0]:
        return
    k = logits.shape[1]
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
    row_loss[i] = math.log(s) + m - logits[i, t]
    row_correct[i] = 1 if am == t else 0
    f = scale / s
    for j in range(k):
        delta[i, j] = delta[i, j] * f
    delta[i, t] -= scale


@cuda.jit
def relu_backward(delta, h, out):
    """``out = delta * (h > 0)`` elementwise on flat arrays."""
    i = cuda.grid(1)
    if i < delta.size:
        out[i] = delta[i] if h[i] > 0 else 0.0
