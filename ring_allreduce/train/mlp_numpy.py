"""NumPy reference kernels for the models' forward/backward (the fused parts: activation, softmax-loss, MSE).

A model kernel object provides ``xp`` (the array module), ``name`` and these functions, all writing into
preallocated outputs:

- ``relu_(z)``: ``z = max(z, 0)`` in place (the post-activation is kept; ``h > 0`` iff ``z > 0``);
- ``relu_backward(delta, h, out)``: ``out = delta * (h > 0)`` (``out`` may alias ``delta``);
- ``softmax_xent(logits, y, scale, delta) -> (loss_sum, correct)``: ``delta = (softmax(logits) - onehot(y)) * scale``,
  the summed cross-entropy and the number of rows whose arg-max equals ``y`` (``logits`` is left untouched);
- ``mse(pred, y, scale, delta) -> (loss_sum, 0)``: ``delta = (pred - y) * scale``, loss ``0.5 * sum((pred - y)^2)``.

Losses are returned as Python floats summed over the rows (not averaged), so ranks can add them exactly.
"""
from __future__ import annotations

import numpy as np


class NumpyModelKernel:
    name = "numpy"
    xp = np

    def relu_(self, z):
        np.maximum(z, 0, out=z)

    def relu_backward(self, delta, h, out):
        np.multiply(delta, h > 0, out=out)

    def softmax_xent(self, logits, y, scale, delta):
        n = logits.shape[0]
        if n == 0:
            return 0.0, 0
        m = logits.max(axis=1, keepdims=True)
        np.subtract(logits, m, out=delta)
        np.exp(delta, out=delta)
        s = delta.sum(axis=1, keepdims=True)
        rows = np.arange(n)
        # log-sum-exp minus the true logit, computed from the shifted logits so nothing overflows
        loss = float(np.sum(np.log(s[:, 0]) + m[:, 0] - logits[rows, y]))
        correct = int(np.count_nonzero(logits.argmax(axis=1) == y))
        np.multiply(delta, (scale / s).astype(delta.dtype, copy=False), out=delta)
        delta[rows, y] -= delta.dtype.type(scale)
        return loss, correct

    def mse(self, pred, y, scale, delta):
        if pred.shape[0] == 0:
            return 0.0, 0
        np.subtract(pred, y.reshape(pred.shape), out=delta)
        loss = 0.5 * float(np.sum(np.square(delta, dtype=np.float64)))
        delta *= delta.dtype.type(scale)
        return loss, 0
