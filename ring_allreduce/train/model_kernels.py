"""Registry of model kernels (forward/backward fused parts): ``numpy`` (reference), ``numba`` (CPU), ``cupy``.

Each entry is a zero-argument factory, so nothing compiles or touches a GPU until a kernel is asked for.
The interface is documented in :mod:`ring_allreduce.kernels.mlp_numpy`.
"""
from __future__ import annotations

from .._registry import Registry, lazy

registry = Registry("model kernel")


@lazy
def _numpy():
    from ..kernels.mlp_numpy import NumpyModelKernel

    return NumpyModelKernel()


@lazy
def _numba():
    from ..kernels.mlp_numba import NumbaModelKernel

    return NumbaModelKernel()


@lazy
def _cupy():
    from ..kernels.mlp_cuda import CupyModelKernel

    return CupyModelKernel()


registry.register("numpy", _numpy)
registry.register("numba", _numba)
registry.register("cupy", _cupy)


def get(name: str = "auto"):
    """Return the model kernel ``name``; ``"auto"`` is ``numba`` when Numba is installed, else ``numpy``."""
    if name == "auto":
        try:
            import numba  # noqa: F401

            name = "numba"
        except ImportError:
            name = "numpy"
    return registry.get(name)()


def names() -> list:
    return registry.names()
