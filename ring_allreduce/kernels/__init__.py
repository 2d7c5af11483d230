"""Reduction kernels: the ``out = (a op b) [/ div]`` hot loop, one registry for every backend.

A kernel object provides:

- ``name``, ``backend`` (``"numpy"``, ``"cupy"`` or ``"numba_cuda"``: the arrays it works on);
- ``reduce(a, b, out, op, div=None)``: ``out[:] = a op b`` elementwise for op in ``sum``/``prod``/``min``/``max``,
  then, when ``div`` is given, divided by ``div`` in the same pass where the kernel can fuse it (floats: true
  division, float16 computed in float32 and rounded once; integers: floor division). ``out`` may alias ``a`` or
  ``b``. All three are 1-D, C-contiguous, same dtype and length;
- ``scale(x, out, div)``: ``out[:] = x / div`` (same rules);
- ``copy(dst, src)``, ``empty(n, dtype)``, ``synchronize()``.

Kernels are registered as zero-argument factories so nothing compiles or touches a GPU at import; ``get(name)``
builds (once) and returns the kernel. ``for_backend(backend)`` gives the default for an array backend, which the
environment variable ``RING_ALLREDUCE_KERNEL`` (or an explicit ``kernel=`` argument) overrides.
"""
from __future__ import annotations

import os

from .._registry import Registry

#: name -> zero-argument factory returning the kernel object
registry = Registry("kernel")
_built: dict = {}

#: default kernel name per array backend
DEFAULTS = {"numpy": "numpy", "cupy": "cupy", "numba_cuda": "numba_cuda"}


def register(name: str, factory=None, *, overwrite: bool = False):
    """Register a zero-argument kernel factory under ``name`` (usable as a decorator)."""
    _built.pop(name, None)
    return registry.register(name, factory, overwrite=overwrite)


def get(name: str):
    """Return the kernel registered as ``name``, building it on first use."""
    factory = registry.get(name)
    if name not in _built:
        _built[name] = factory()
    return _built[name]


def names() -> list:
    return registry.names()


def for_backend(backend: str, override: str = None):
    """Return the kernel for arrays of ``backend``: ``override``, else ``$RING_ALLREDUCE_KERNEL``, else the default."""
    name = override or os.environ.get("RING_ALLREDUCE_KERNEL") or DEFAULTS[backend]
    k = get(name)
    if k.backend != backend:
        raise ValueError(f"kernel {name!r} works on {k.backend} arrays, not {backend} arrays")
    return k


def _register_builtin() -> None:
    from . import numpy_kernels

    register("numpy", numpy_kernels.NumpyKernel)


_register_builtin()
