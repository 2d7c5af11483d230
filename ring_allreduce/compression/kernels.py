"""The compression-kernel registry: name -> zero-argument factory of a kernel set (see ``compression/codec_numpy``).

A kernel set provides ``sign_encode/sign_decode``, ``int8_encode/int8_decode``, ``qsgd_encode/qsgd_decode``,
``topk_indices``, ``gather`` and ``scatter`` with the conventions of :mod:`ring_allreduce.compression.codec_numpy`
(the reference). Sets are built on first use, so registering them imports no Numba, CuPy or CUDA.
This registry is separate from the reduction-kernel registry in :mod:`ring_allreduce.kernels`.
"""
from __future__ import annotations

from .._registry import Registry

registry = Registry("compression kernel set")


def register(name: str, factory=None, *, overwrite: bool = False):
    """Register a zero-argument factory returning a compression kernel set (usable as a decorator)."""
    return registry.register(name, factory, overwrite=overwrite)


def get(name: str):
    """Return the kernel set registered as ``name``, building it on first use."""
    return registry.build(name)


def names() -> list:
    return registry.names()


def _numpy():
    from . import codec_numpy

    return codec_numpy


def _numba():
    from . import codec_numba

    return codec_numba


def _numba_cuda():
    from .codec_cuda import NumbaCudaKernels

    return NumbaCudaKernels()


def _cupy():
    from .codec_cuda import CupyKernels

    return CupyKernels()


register("numpy", _numpy)
register("numba", _numba)
register("numba_cuda", _numba_cuda)
register("cupy", _cupy)
