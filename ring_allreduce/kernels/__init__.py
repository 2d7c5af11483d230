"""Reduction kernels: the ``out = (a op b) [/ div]`` hot loop, one registry for every backend.

A kernel object provides:

- ``name``, ``backend`` (``"numpy"``, ``"cupy"`` or ``"numba_cuda"``: the arrays it works on);
- ``reduce(a, b, out, op, div=None)``: ``out[:] = a op b`` elementwise for op in ``sum``/``prod``/``min``/``max``,
  then, when ``div`` is given, divided by ``div`` in the same pass where the kernel can fuse it (floats: true
  division, float16 computed in float32 and rounded once; integers: floor division). ``out`` may alias ``a`` or
  ``b``. All three are 1-D, C-contiguous, same dtype and length;
  min/max semantics, the same in every kernel, so that the result does not depend on size or algorithm: a NaN in
  either operand gives NaN, and ``min(-0.0, +0.0) = -0.0``, ``max(-0.0, +0.0) = +0.0`` in either order (native
  ``MPI_MIN``/``MPI_MAX`` leave both to the implementation: MPICH drops a NaN depending on operand order);
- ``scale(x, out, div)``: ``out[:] = x / div`` (same rules);
- ``copy(dst, src)``, ``empty(n, dtype)``, ``synchronize()``.

Kernels are registered as zero-argument factories so nothing compiles or touches a GPU at import; ``get(name)``
builds (once) and returns the kernel. ``for_backend(backend)`` gives the default for an array backend, which the
environment variable ``RING_ALLREDUCE_KERNEL`` (or an explicit ``kernel=`` argument) overrides.

Built in: ``numpy`` (reference, two passes for ``div``), and where the library is installed ``numba`` (fused,
threaded by ranks per node: see ``numba_cpu``), ``auto`` (NumPy arrays' default with Numba: ``host_auto``),
``numba_cuda`` and ``cupy`` (device arrays; built only when first used, and failing then if there is no GPU).

This package holds the reduction kernels only: the model kernels (``mlp_*``) live next to the trainer in
:mod:`ring_allreduce.train`, the codec kernels (``codec_*``) next to compression in :mod:`ring_allreduce.compression`.
"""
from __future__ import annotations

import importlib
import importlib.util
import os

from .._registry import Registry

#: name -> zero-argument factory returning the kernel object
registry = Registry("kernel")

#: default kernel name per array backend
DEFAULTS = {"numpy": "numpy", "cupy": "cupy", "numba_cuda": "numba_cuda"}


def register(name: str, factory=None, *, overwrite: bool = False):
    """Register a zero-argument kernel factory under ``name`` (usable as a decorator)."""
    return registry.register(name, factory, overwrite=overwrite)


def get(name: str):
    """Return the kernel registered as ``name``, building it on first use."""
    return registry.build(name)


def names(backend: str = None) -> list:
    """Return the registered kernel names; with ``backend``, only those that work on that backend's arrays."""
    if backend is None:
        return registry.names()
    return [n for n in registry.names() if _backend_of(n) == backend]


def _backend_of(name: str) -> str:
    # factories declare ``backend`` (classes and lazy_factory do), so listing builds nothing
    declared = getattr(registry.get(name), "backend", None)
    return declared if declared is not None else get(name).backend


def for_backend(backend: str, override: str = None):
    """Return the kernel for arrays of ``backend``: ``override``, else ``$RING_ALLREDUCE_KERNEL``, else the default."""
    name = override or os.environ.get("RING_ALLREDUCE_KERNEL") or DEFAULTS[backend]
    k = get(name)
    if k.backend != backend:
        raise ValueError(f"kernel {name!r} works on {k.backend} arrays, not {backend} arrays")
    return k


def lazy_factory(module: str, attr: str, backend: str):
    """Return a factory that imports ``ring_allreduce.kernels.<module>`` and builds ``<attr>()`` when first called.

    The kernel module (and the library it needs: Numba, CuPy) is imported only then, never at package import.
    """
    def factory():
        mod = importlib.import_module(f"{__name__}.{module}")
        return getattr(mod, attr)()

    factory.backend = backend
    factory.__qualname__ = factory.__name__ = f"{module}.{attr}"
    return factory


def importable(module: str) -> bool:
    """Whether ``module`` is installed (found without importing it, so nothing JIT-compiles or touches a GPU)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _register_builtin() -> None:
    from . import numpy_kernels

    register("numpy", numpy_kernels.NumpyKernel)
    if importable("numba"):
        register("numba", lazy_factory("numba_cpu", "NumbaCpuKernel", "numpy"))
        register("auto", lazy_factory("host_auto", "HostAutoKernel", "numpy"))
        register("numba_cuda", lazy_factory("numba_cuda", "NumbaCudaKernel", "numba_cuda"))
        # NumPy arrays: Numba's fused kernels where measured faster, NumPy's ufuncs for small plain ops (host_auto)
        DEFAULTS["numpy"] = "auto"
    if importable("cupy"):
        register("cupy", lazy_factory("cupy_kernels", "CupyKernel", "cupy"))


_register_builtin()
