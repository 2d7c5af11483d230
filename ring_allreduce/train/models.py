"""Models over one flat parameter vector: MLP (ReLU, softmax cross-entropy), logistic and linear regression.

Parameters are views into one flat array and gradients views into one flat gradient storage (the bucket storage),
both laid out in the order backward produces them: the last layer first. Backward calls ``on_ready(n)`` after
each layer, meaning ``grad[:n]`` is final, so the trainer can allreduce the first buckets while the earlier
layers' gradients are still being computed.

Losses and gradients are *sums* over the local rows times ``scale``; the trainer passes
``scale = 1 / (rows in the global batch)`` so that summing over ranks gives the global mean gradient.
"""
from __future__ import annotations

from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np


class ParamSpec(NamedTuple):
    name: str
    shape: Tuple[int, ...]
    offset: int
    size: int


class Network:
    """A stack of dense layers: ReLU between layers, ``"xent"`` (softmax cross-entropy) or ``"mse"`` at the end."""

    def __init__(self, sizes: Sequence[int], loss: str = "xent", kernel=None, dtype=np.float32):
        from . import model_kernels

        if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
            raise ValueError(f"layer sizes must be >= 2 positive integers, got {list(sizes)}")
        if loss not in ("xent", "mse"):
            raise ValueError(f"loss must be 'xent' or 'mse', got {loss!r}")
        self.sizes = [int(s) for s in sizes]
        self.loss = loss
        self.dtype = np.dtype(dtype)
        if kernel is None or isinstance(kernel, str):
            kernel = model_kernels.get(kernel or "auto")
        self.kernel = kernel
        self.xp = self.kernel.xp
        specs, off = [], 0
        for i in reversed(range(len(self.sizes) - 1)):  # last layer first: its gradient is ready first
            for name, shape in ((f"W{i}", (self.sizes[i], self.sizes[i + 1])), (f"b{i}", (self.sizes[i + 1],))):
                n = int(np.prod(shape))
                specs.append(ParamSpec(name, shape, off, n))
                off += n
        self.specs: List[ParamSpec] = specs
        self.n_params = off
        self._acts: dict = {}

    @property
    def n_layers(self) -> int:
        return len(self.sizes) - 1

    def describe(self) -> dict:
        return {"sizes": self.sizes, "loss": self.loss, "dtype": str(self.dtype), "n_params": self.n_params}

    def views(self, flat) -> dict:
        """Name -> shaped view of ``flat`` (parameters or gradients)."""
        return {s.name: flat[s.offset:s.offset + s.size].reshape(s.shape) for s in self.specs}

    def layer_end(self, i: int) -> int:
        """Offset just past layer ``i``'s parameters (everything before it is later layers, ready earlier)."""
        s = next(s for s in self.specs if s.name == f"b{i}")
        return s.offset + s.size

    def init(self, seed: int) -> np.ndarray:
        """He-initialised weights and zero biases from ``seed`` (a NumPy array; the same on every rank)."""
        rng = np.random.default_rng([seed, 0x1217])
        flat = np.zeros(self.n_params, dtype=self.dtype)
        v = self.views(flat)
        for i in range(self.n_layers):
            fan_in = self.sizes[i]
            std = np.sqrt(2.0 / fan_in) if i < self.n_layers - 1 else np.sqrt(1.0 / fan_in)
            v[f"W{i}"][...] = rng.standard_normal(v[f"W{i}"].shape) * std
        return flat

    def _buffers(self, n: int):
        key = n
        acts = self._acts.get(key)
        if acts is None:
            xp = self.xp
            acts = [xp.empty((n, s), dtype=self.dtype) for s in self.sizes[1:]]
            deltas = [xp.empty((n, s), dtype=self.dtype) for s in self.sizes[1:]]
            if len(self._acts) > 8:  # batch sizes vary only at epoch ends; keep the cache small
                self._acts.clear()
            acts = self._acts[key] = (acts, deltas)
        return acts

    def forward(self, params, X):
        """Return the output layer (logits or predictions) for rows ``X``; activations are kept for backward."""
        p = self.views(params)
        acts, _ = self._buffers(X.shape[0])
        h = X
        for i in range(self.n_layers):
            z = acts[i]
            self.xp.matmul(h, p[f"W{i}"], out=z)
            z += p[f"b{i}"]
            if i < self.n_layers - 1:
                self.kernel.relu_(z)
            h = z
        return h

    def loss_and_grad(self, params, X, y, grad, scale: float,
                      on_ready: Optional[Callable[[int], None]] = None) -> Tuple[float, int]:
        """Write ``scale * sum of per-row gradients`` into ``grad``; return (loss sum, correct count).

        ``on_ready(n)`` is called after each layer with ``grad[:n]`` final (possibly more than once with the same
        ``n``: a progress point). Zero rows give zero gradients (and still call ``on_ready``, so every rank releases
        its buckets in the same order).
        """
        k, xp = self.kernel, self.xp
        n = X.shape[0]
        out = self.forward(params, X)
        acts, deltas = self._buffers(n)
        delta = deltas[-1]
        if self.loss == "xent":
            loss, correct = k.softmax_xent(out, y, scale, delta)
        else:
            loss, correct = k.mse(out, y, scale, delta)
        p, g = self.views(params), self.views(grad)
        for i in reversed(range(self.n_layers)):
            h_in = X if i == 0 else acts[i - 1]
            xp.matmul(h_in.T, delta, out=g[f"W{i}"])
            xp.sum(delta, axis=0, out=g[f"b{i}"])
            if i > 0:
                # released before the next delta is computed, so the bucket travels meanwhile
                if on_ready is not None:
                    on_ready(self.layer_end(i))
                nxt = deltas[i - 1]
                xp.matmul(delta, p[f"W{i}"].T, out=nxt)
                if on_ready is not None:
                    on_ready(self.layer_end(i))  # the same offset again: a progress point for nonblocking sends
                k.relu_backward(nxt, acts[i - 1], nxt)
                delta = nxt
            elif on_ready is not None:
                on_ready(self.n_params)
        return loss, correct

    def evaluate(self, params, X, y) -> Tuple[float, int]:
        """Return (loss sum, correct count) over rows ``X`` without touching gradients."""
        n = X.shape[0]
        if n == 0:
            return 0.0, 0
        out = self.forward(params, X)
        _, deltas = self._buffers(n)
        if self.loss == "xent":
            return self.kernel.softmax_xent(out, y, 1.0, deltas[-1])
        return self.kernel.mse(out, y, 1.0, deltas[-1])


def mlp(n_in: int, hidden: Sequence[int], n_classes: int, **kw) -> Network:
    return Network([n_in, *hidden, n_classes], "xent", **kw)


def logreg(n_in: int, n_classes: int, **kw) -> Network:
    return Network([n_in, n_classes], "xent", **kw)


def linreg(n_in: int, n_out: int = 1, **kw) -> Network:
    return Network([n_in, n_out], "mse", **kw)


def build(name: str, n_in: int, n_out: int, hidden: Sequence[int] = (128,), **kw) -> Network:
    """Build ``"mlp"``, ``"logreg"`` or ``"linreg"``."""
    if name == "mlp":
        return mlp(n_in, hidden, n_out, **kw)
    if name == "logreg":
        return logreg(n_in, n_out, **kw)
    if name == "linreg":
        return linreg(n_in, n_out, **kw)
    raise ValueError(f"unknown model {name!r}; valid: linreg, logreg, mlp")
