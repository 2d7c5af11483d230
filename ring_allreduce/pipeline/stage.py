"""One pipeline stage's arithmetic: layers ``[a, b)`` of a :class:`~ring_allreduce.train.models.Network`.

Buffers are allocated once per micro-batch capacity (``rows`` at most per micro-batch) and reused every step:
each micro-batch has its own activations (kept from forward to backward), its own received input and received
output-gradient buffers (posted as receives before the step's work starts) and its own outgoing buffers, so no
buffer is rewritten while a nonblocking send or receive still owns it.

Gradients are accumulated over the micro-batches into the stage's slice of the flat gradient storage; the first
micro-batch to reach a layer writes it, later ones add (a per-layer scratch product, then ``+=``).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np


class Stage:
    """Forward and backward of layers ``[a, b)`` for one micro-batch at a time (host NumPy arrays)."""

    def __init__(self, model, layers: Tuple[int, int], micro: int, rows: int):
        self.model, self.kernel = model, model.kernel
        self.a, self.b = layers
        self.first, self.last = self.a == 0, self.b == model.n_layers
        self.micro, self.rows = int(micro), int(rows)
        sizes, dt = model.sizes, model.dtype
        self.n_in, self.n_out = sizes[self.a], sizes[self.b]
        # acts[m][i - a]: post-activation output of layer i for micro-batch m
        self.acts = [[np.empty((rows, sizes[i + 1]), dt) for i in range(self.a, self.b)] for _ in range(micro)]
        self.x_in = [np.empty((rows, self.n_in), dt) for _ in range(micro)]  # received activations
        self.g_out = [np.empty((rows, self.n_out), dt) for _ in range(micro)]  # received / last-layer deltas
        self.g_in = [np.empty((rows, self.n_in), dt) for _ in range(micro)]  # gradient sent to the stage before
        self.delta = [np.empty((rows, sizes[i + 1]), dt) for i in range(self.a, self.b)]
        self.scratch = {i: (np.empty((sizes[i], sizes[i + 1]), dt), np.empty(sizes[i + 1], dt))
                        for i in range(self.a, self.b)}
        self._touched: set = set()

    def begin(self) -> None:
        """A new step: the next gradient written to each layer overwrites instead of adding."""
        self._touched.clear()

    def forward(self, params, m: int, x) -> np.ndarray:
        """Run micro-batch ``m`` (rows ``x``) through the stage; return the stage's output (a view, kept)."""
        p = self.model.views(params)
        n = x.shape[0]
        h = x
        for i in range(self.a, self.b):
            z = self.acts[m][i - self.a][:n]
            np.matmul(h, p[f"W{i}"], out=z)
            z += p[f"b{i}"]
            if i < self.model.n_layers - 1:
                self.kernel.relu_(z)
            h = z
        return h

    def loss(self, m: int, n: int, y, scale: float):
        """Last stage: the loss of micro-batch ``m``; its output delta goes to ``g_out[m]``. Returns (loss, correct)."""
        out, delta = self.acts[m][-1][:n], self.g_out[m][:n]
        if self.model.loss == "xent":
            return self.kernel.softmax_xent(out, y, scale, delta)
        return self.kernel.mse(out, y, scale, delta)

    def backward(self, params, grad, m: int, x, n: int):
        """Back-propagate micro-batch ``m`` from ``g_out[m]`` (the gradient of the stage's output: post-activation
        for a middle stage, the loss delta for the last); accumulate parameter gradients into ``grad``; return the
        gradient of the stage's input (``g_in[m]``), or None on the first stage."""
        p, g = self.model.views(params), self.model.views(grad)
        k = self.kernel
        delta = self.g_out[m][:n]
        if not self.last:  # the received gradient is of the post-ReLU output: through the ReLU first
            k.relu_backward(delta, self.acts[m][-1][:n], delta)
        for i in reversed(range(self.a, self.b)):
            h_in = x if i == self.a else self.acts[m][i - 1 - self.a][:n]
            self._accumulate(g, i, h_in, delta)
            if i > self.a:
                nxt = self.delta[i - 1 - self.a][:n]
                np.matmul(delta, p[f"W{i}"].T, out=nxt)
                k.relu_backward(nxt, self.acts[m][i - 1 - self.a][:n], nxt)
                delta = nxt
            elif not self.first:
                out = self.g_in[m][:n]
                np.matmul(delta, p[f"W{i}"].T, out=out)
                return out
        return None

    def _accumulate(self, g, i, h_in, delta) -> None:
        if i not in self._touched:
            np.matmul(h_in.T, delta, out=g[f"W{i}"])
            np.sum(delta, axis=0, out=g[f"b{i}"])
            self._touched.add(i)
            return
        sw, sb = self.scratch[i]
        np.matmul(h_in.T, delta, out=sw)
        np.sum(delta, axis=0, out=sb)
        g[f"W{i}"] += sw
        g[f"b{i}"] += sb
