"""Framework-agnostic bucketed gradient reduction for data-parallel optimizers (NumPy, CuPy; torch builds on it).

The one-call contract: build :class:`GradientBuckets` once from the parameters' ``(name, shape, dtype)`` in the
order backward is expected to produce their gradients, then per step call ``grad_ready(i, grad)`` as each
gradient becomes final and ``wait()`` before the update; ``grad(i)`` is the reduced gradient::

    core = GradientBuckets([(n, p.shape, p.dtype) for n, p in reversed(params)], comm, op="avg")
    for step in ...:
        for i, g in backward():          # any order; buckets start in index order as soon as they are full
            core.grad_ready(i, g)
        core.wait()                       # every bucket reduced
        for i, (_, p) in enumerate(reversed(params)):
            p -= lr * core.grad(i)
"""
from .core import GradientBuckets, Layout

__all__ = ["GradientBuckets", "Layout"]
