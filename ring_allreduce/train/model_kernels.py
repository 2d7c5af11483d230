"""Registry of model kernels (fused forward/backward parts): ``numpy`` (reference), ``numba`` (CPU), ``cupy`` and
``cupy-numba`` (GPU).

Each entry is a zero-argument factory, so nothing compiles or touches a GPU until a kernel is asked for.
The interface is documented in :mod:`ring_allreduce.train.mlp_numpy`.
"""
from __future__ import annotations

import importlib.util

from .._registry import Registry, lazy

registry = Registry("model kernel")


@lazy
def _numpy():
    from .mlp_numpy import NumpyModelKernel

    return NumpyModelKernel()


@lazy
def _numba():
    from .mlp_numba import NumbaModelKernel

    return NumbaModelKernel()


@lazy
def _cupy():
    from .mlp_cuda import CupyModelKernel

    return CupyModelKernel()


@lazy
def _cupy_numba():
    from .mlp_cuda import NumbaCudaModelKernel

    return NumbaCudaModelKernel()


registry.register("numpy", _numpy)
registry.register("numba", _numba)
registry.register("cupy", _cupy)
registry.register("cupy-numba", _cupy_numba)


def get(name: str = "auto"):
    """Return the model kernel ``name``; ``"auto"`` is ``numba`` when Numba is installed, else ``numpy``."""
    if name == "auto":
        name = "numba" if importlib.util.find_spec("numba") is not None else "numpy"
    return registry.get(name)()


def names() -> list:
    return registry.names()
