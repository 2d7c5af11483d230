"""Allreduce of torch tensors: CPU tensors as zero-copy NumPy views, CUDA tensors as CuPy/Numba device views.

A tensor that cannot be viewed (unsupported dtype or device, not a tensor) is an argument error agreed like any
other: every rank raises the same :class:`~ring_allreduce.ArgumentError`. Non-contiguous tensors reach the core's
own validation as non-contiguous views and fail there, the same way. CUDA tensors: the current torch stream is
synchronized before the device view is handed over (the core then orders its own kernels and MPI calls), so the
result is ready to read on any stream when the call returns.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import api
from .. import transport as _transport
from ..errors import ArgumentError
from ..plan import check_words

#: torch dtypes with a NumPy twin the core reduces
_DTYPES = (torch.float16, torch.float32, torch.float64, torch.int32, torch.int64)


def as_array(t):
    """A zero-copy array view of tensor ``t`` (NumPy on CPU, CuPy or Numba on CUDA), or an ArgumentError."""
    if not isinstance(t, torch.Tensor):
        raise ArgumentError(f"expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _DTYPES:
        raise ArgumentError(f"unsupported dtype {t.dtype}; supported: {', '.join(str(d) for d in _DTYPES)}")
    t = t.detach()
    if t.device.type == "cpu":
        return t.numpy()
    if t.device.type == "cuda":
        torch.cuda.current_stream(t.device).synchronize()  # writes queued by torch land before anyone reads
        try:
            import cupy

            with cupy.cuda.Device(t.device.index):
                return cupy.from_dlpack(t)
        except ImportError:
            pass
        try:
            from numba import cuda

            return cuda.as_cuda_array(t)  # through __cuda_array_interface__
        except ImportError:
            raise ArgumentError("CUDA tensors need CuPy or Numba (pip install 'ring-allreduce[cupy]')") from None
    raise ArgumentError(f"unsupported device {t.device}; supported: cpu, cuda")


def as_tensor(a, like=None):
    """The tensor viewing array ``a`` (zero-copy)."""
    if isinstance(a, np.ndarray):
        return torch.from_numpy(a)
    return torch.from_dlpack(a)


def _views(comm, tensor, out, check=True):
    """``(comm, x, out)`` as arrays; a conversion error on any rank raises the same ArgumentError on every rank
    (when ``check``), through the same agreement collective the core runs for valid arguments."""
    if comm is None:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
    if check is None:
        check = _transport.of(comm).check  # as the core decides it (agreed across ranks)
    try:
        x = as_array(tensor)
        o = None if out is None else (x if out is tensor else as_array(out))
        return comm, x, o
    except ArgumentError as e:
        if check:
            check_words(_transport.of(comm), np.array([-1, 1, 0, 0], dtype=np.int64), {}, e)
        raise


def allreduce(tensor, comm=None, *, op="sum", algorithm="auto", out=None, check=None, kernel=None):
    """Reduce ``tensor`` across the ranks of ``comm``; returns a tensor (``out`` when given; ``out=tensor``: in
    place). Arguments as :func:`ring_allreduce.allreduce`."""
    comm, x, o = _views(comm, tensor, out, check)
    res = api.allreduce(x, comm, op=op, algorithm=algorithm, out=o, check=check, kernel=kernel)
    if out is not None:
        return out
    return as_tensor(res)


class TensorPlan:
    """A persistent allreduce plan on tensors (see :func:`ring_allreduce.allreduce_init`); returns tensors."""

    __slots__ = ("plan", "out")

    def __init__(self, plan, out):
        self.plan, self.out = plan, out

    def __call__(self):
        self.plan()
        return self.out

    def start(self):
        self.plan.start()
        return self

    def test(self) -> bool:
        return self.plan.test()

    def wait(self):
        self.plan.wait()
        return self.out

    def free(self) -> None:
        self.plan.free()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.free()

    def __repr__(self) -> str:
        return f"Tensor{self.plan!r}"


def allreduce_init(tensor, comm=None, *, op="sum", algorithm="auto", out=None, kernel=None) -> TensorPlan:
    """A persistent plan reducing ``tensor`` into ``out`` (collective; None allocates a tensor once)."""
    comm, x, o = _views(comm, tensor, out)
    plan = api.allreduce_init(x, comm, op=op, algorithm=algorithm, out=o, kernel=kernel)
    return TensorPlan(plan, out if out is not None else as_tensor(plan.out))


def iallreduce(tensor, comm=None, *, op="sum", algorithm="auto", out=None, kernel=None) -> TensorPlan:
    """Start a nonblocking allreduce of ``tensor``; ``wait()`` returns the result tensor."""
    return allreduce_init(tensor, comm, op=op, algorithm=algorithm, out=out, kernel=kernel).start()
