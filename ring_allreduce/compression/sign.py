"""``sign``: one bit per element plus one float32 scale per tensor (with error feedback this is EF-signSGD)."""
from __future__ import annotations

import math

import numpy as np

from .base import Compressor, Fields


class Sign(Compressor):
    """Send ``sign(x)`` as packed bits and ``mean |x|`` per tensor of the bucket (Karimireddy et al., 2019).

    A per-tensor scale keeps layers with small gradients from being swamped by the bucket's largest layer.
    Payload: ``4 * tensors + sum(ceil(n_i / 8))`` bytes, about 32x smaller than float32.
    """

    name = "sign"

    def _fields(self, layout):
        def build():
            spec = [("scales", np.float32, len(layout.shapes))]
            spec += [(f"bits{i}", np.uint8, (math.prod(s) + 7) // 8) for i, s in enumerate(layout.shapes)]
            return Fields(spec)

        return self._memo(layout.shapes, build)

    def payload_spec(self, layout):
        return [(self._fields(layout).nbytes, np.dtype(np.uint8))]

    def compress(self, x, layout):
        payload, f = self._fields(layout).new()
        for i, (_, t) in enumerate(layout.tensors(x)):
            bits, scale = self.kernels.sign_encode(t)
            f[f"bits{i}"][:] = bits
            f["scales"][i] = scale
        return payload, layout

    def decompress(self, payload, layout, out=None, add=False):
        f = self._fields(layout).views(payload)
        out = self._out(out, layout.size)
        for i, (_, t) in enumerate(layout.tensors(out)):
            self.kernels.sign_decode(f[f"bits{i}"], t.size, f["scales"][i], t, add)
        return out
