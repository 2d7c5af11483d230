"""Array backends: which library owns an array (NumPy, CuPy, Numba CUDA) and how to stage it through host memory.

Nothing here imports CuPy or Numba: an array can only be a CuPy/Numba array if that library is already imported.
"""
from __future__ import annotations

import os
import sys

import numpy as np

NUMPY, CUPY, NUMBA_CUDA = "numpy", "cupy", "numba_cuda"


class BackendOps:
    """What the package needs from a device backend registered at run time (see :func:`register`)."""

    __slots__ = ("is_array", "synchronize", "to_host", "from_host", "empty_like")

    def __init__(self, is_array, synchronize, to_host, from_host, empty_like):
        self.is_array, self.synchronize, self.to_host = is_array, synchronize, to_host
        self.from_host, self.empty_like = from_host, empty_like


#: device backends registered at run time (the tests' fake asynchronous device): name -> BackendOps
_EXTRA: dict = {}


def register(name: str, *, is_array, synchronize, to_host, from_host, empty_like) -> None:
    """Register a device array backend: ``is_array(x) -> bool``, ``synchronize()`` (wait for the stream),
    ``to_host(x) -> ndarray`` (a new, writable, C-contiguous array, after synchronizing: the one-shot call reduces
    into it), ``from_host(host, out)`` (may be asynchronous: the caller
    synchronizes), ``empty_like(x)``. Its arrays must expose ``__cuda_array_interface__`` (what mpi4py hands to
    MPI) and register a kernel (``kernels.DEFAULTS[name]``)."""
    _EXTRA[name] = BackendOps(is_array, synchronize, to_host, from_host, empty_like)


def unregister(name: str) -> None:
    _EXTRA.pop(name, None)


def array_backend(x) -> str:
    """Return ``"numpy"``, ``"cupy"`` or ``"numba_cuda"`` for an array, or raise ``TypeError``."""
    if isinstance(x, np.ndarray):
        return NUMPY
    mod = type(x).__module__ or ""
    if mod.startswith("cupy") and hasattr(x, "__cuda_array_interface__"):
        return CUPY
    if "numba" in sys.modules and mod.startswith("numba"):
        from numba import cuda

        if hasattr(cuda, "is_cuda_array"):
            is_device = cuda.is_cuda_array(x)
        else:  # the CUDA simulator (NUMBA_ENABLE_CUDASIM=1) has no is_cuda_array
            is_device = isinstance(x, cuda.devicearray.FakeCUDAArray)
        if is_device:
            return NUMBA_CUDA
    for name, ops in _EXTRA.items():
        if ops.is_array(x):
            return name
    raise TypeError(f"expected a NumPy, CuPy or Numba CUDA array, got {type(x).__module__}.{type(x).__qualname__}")


def is_c_contiguous(x) -> bool:
    flags = getattr(x, "flags", None)
    if flags is not None:
        try:
            return bool(flags["C_CONTIGUOUS"])
        except (KeyError, TypeError):
            return bool(getattr(flags, "c_contiguous", False))
    return bool(getattr(x, "is_c_contiguous", lambda: False)())


def flat(x):
    """Return a 1-D view of a C-contiguous array of any backend."""
    return x.reshape(-1) if x.ndim != 1 else x


def cuda_aware_mpi() -> bool:
    """Whether to hand device buffers to MPI directly.

    Set ``RING_ALLREDUCE_CUDA_AWARE=1`` when the MPI library is CUDA-aware (e.g. Open MPI built with UCX/CUDA);
    the default stages device buffers through host memory, which works with every MPI.
    """
    return os.environ.get("RING_ALLREDUCE_CUDA_AWARE", "0").lower() in ("1", "true", "yes")


def to_host(x) -> np.ndarray:
    """Copy a device array to a new host array; waits for the array's pending work first."""
    b = array_backend(x)
    if b == NUMPY:
        return x
    synchronize(b)
    if b == CUPY:
        return x.get()
    if b in _EXTRA:
        return _EXTRA[b].to_host(x)
    return x.copy_to_host()


def to_host_into(x, host: np.ndarray) -> np.ndarray:
    """Copy the device array ``x`` into the preallocated host array ``host`` (same shape and dtype) and return it;
    waits for the array's pending work first. One copy: no temporary host array in between."""
    b = array_backend(x)
    if b == NUMPY:
        np.copyto(host, x)
        return host
    synchronize(b)
    if b == CUPY:
        x.get(out=host)
    elif b in _EXTRA:
        np.copyto(host, _EXTRA[b].to_host(x))
    else:
        x.copy_to_host(host)
    return host


def host_buffer(backend: str, shape, dtype) -> np.ndarray:
    """A host array to stage ``backend``'s arrays through: page-locked (pinned) for CuPy and Numba CUDA, so that
    the copies run at the link's rate and need no bounce buffer in the driver; plain NumPy otherwise or when the
    driver refuses to pin."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape)) if len(shape) else 1
    try:
        if backend == CUPY and n:
            import cupy

            # outside CuPy's pinned pool, which keeps freed blocks page-locked for the life of the process: this
            # buffer is unpinned when the last array viewing it goes
            mem = cupy.cuda.PinnedMemoryPointer(cupy.cuda.PinnedMemory(n * dtype.itemsize), 0)
            return np.frombuffer(mem, dtype, n).reshape(shape)
        if backend == NUMBA_CUDA and n:
            from numba import cuda

            return cuda.pinned_array(shape, dtype)
    except Exception:  # noqa: BLE001 - no pinned memory (limits, simulator): pageable memory still works
        pass
    return np.empty(shape, dtype)


def from_host(host: np.ndarray, out) -> None:
    """Copy ``host`` into the device array ``out`` (same shape and dtype) and wait for the copy."""
    b = array_backend(out)
    if b == NUMPY:
        np.copyto(out, host)
        return
    if b == CUPY:
        out.set(host)
    elif b in _EXTRA:
        _EXTRA[b].from_host(host, out)
    else:
        out.copy_to_device(host)
    synchronize(b)


def empty_like(x):
    b = array_backend(x)
    if b == NUMPY:
        return np.empty_like(x)
    if b == CUPY:
        import cupy

        return cupy.empty_like(x)
    if b in _EXTRA:
        return _EXTRA[b].empty_like(x)
    from numba import cuda

    return cuda.device_array(x.shape, dtype=x.dtype)


def synchronize(backend: str) -> None:
    """Wait for the current stream so that MPI never reads a buffer a kernel is still writing."""
    if backend == CUPY:
        import cupy

        cupy.cuda.get_current_stream().synchronize()
    elif backend == NUMBA_CUDA:
        from numba import cuda

        cuda.synchronize()
    elif backend in _EXTRA:
        _EXTRA[backend].synchronize()
