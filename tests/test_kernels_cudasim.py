"""Numba CUDA kernels under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) against NumPy, and the allreduce of a
Numba device array through host staging under MPI.

The simulator runs each block as Python threads (~0.3 s per block of 128): arrays here span one or two blocks,
and the kernel caps its grid to two blocks under the simulator (the grid-stride loop covers the rest).
"""
import importlib.util
import os
import warnings

import numpy as np
import pytest

from tests.mpi_util import all_ok, assert_identical, rank_input
from tests.kernel_ref import assert_close, reference

pytestmark = [
    pytest.mark.cudasim,
    pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba is not installed"),
    pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM") != "1",
                       reason="needs NUMBA_ENABLE_CUDASIM=1 (tests/run.py --tiers cudasim sets it)"),
]

OPS = ("sum", "prod", "min", "max")
DTYPES = ("float16", "float32", "float64", "int32", "int64")


@pytest.fixture(scope="module")
def kernel():
    from ring_allreduce import kernels

    return kernels.get("numba_cuda")


@pytest.mark.parametrize("dtype", DTYPES)
def test_reduce_matches_numpy(kernel, dtype):
    from numba import cuda

    n = 200  # two blocks of 128 threads
    rng = np.random.default_rng(DTYPES.index(dtype))
    dt = np.dtype(dtype)
    for op in OPS:
        if op == "prod":
            a, b = (rng.choice(np.array([1, 2, -1, 3]), size=n).astype(dt) for _ in range(2))
        elif dt.kind == "f":
            a, b = ((rng.standard_normal(n) * 100).astype(dt) for _ in range(2))
        else:
            a, b = (rng.integers(-10**6, 10**6, size=n).astype(dt) for _ in range(2))
        for div in (None, 3):
            da, db = cuda.to_device(a), cuda.to_device(b)
            out = cuda.device_array(n, dtype=dt)
            kernel.reduce(da, db, out, op, div)
            kernel.synchronize()
            assert_close(out.copy_to_host(), reference(a, b, op, div), dtype, f"{op} {dtype} div={div}")
        # in place (out=b): same values as out of place
        kernel.reduce(da, db, db, op, 3)
        np.testing.assert_array_equal(db.copy_to_host(), out.copy_to_host(), err_msg=f"{op} {dtype} out=b")


@pytest.mark.parametrize("dtype", ("float16", "float32", "int32", "int64"))
def test_scale_and_integer_wrap(kernel, dtype):
    from numba import cuda

    dt = np.dtype(dtype)
    if dt.kind == "i":  # wraps in the dtype's width, then floors (as NumPy's add then floor_divide)
        info = np.iinfo(dt)
        a = np.array([info.max, info.min, -7, 7, 5], dtype=dt)
        b = np.array([1, -1, 0, -14, 0], dtype=dt)
        out = cuda.device_array(a.size, dtype=dt)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the simulator computes with NumPy scalars
            kernel.reduce(cuda.to_device(a), cuda.to_device(b), out, "sum", 2)
        np.testing.assert_array_equal(out.copy_to_host(), np.floor_divide(np.add(a, b), dt.type(2)))
    x = (np.arange(130) - 65).astype(dt) * 3
    dx = cuda.to_device(x)
    out = cuda.device_array(x.size, dtype=dt)
    kernel.scale(dx, out, 4)
    assert_close(out.copy_to_host(), reference(x, np.zeros_like(x), "sum", 4), dtype, f"scale {dtype}")
    kernel.scale(dx, dx, 1)
    np.testing.assert_array_equal(dx.copy_to_host(), x)


def test_empty_and_copy(kernel):
    from numba import cuda

    e = kernel.empty(0, np.float32)
    kernel.reduce(e, e, e, "sum", 2)
    kernel.scale(e, e, 2)
    src = cuda.to_device(np.arange(9, dtype=np.float32))
    dst = kernel.empty(9, np.float32)
    kernel.copy(dst, src)
    np.testing.assert_array_equal(dst.copy_to_host(), np.arange(9, dtype=np.float32))


@pytest.mark.mpi
@pytest.mark.parametrize("op", ("sum", "avg"))
def test_allreduce_numba_device_array_staged(op):
    """A device array goes device -> host -> algorithm -> device and matches the NumPy allreduce on every rank."""
    from mpi4py import MPI
    from numba import cuda

    import ring_allreduce
    from ring_allreduce import backends

    comm = MPI.COMM_WORLD
    n = 1001  # not divisible by the usual p
    x = rank_input(11, comm.rank, n, "float32", op).reshape(7, 143)
    expected = ring_allreduce.allreduce(x.copy(), comm, op=op, algorithm="ring")
    dx = cuda.to_device(x)
    ok = backends.array_backend(dx) == backends.NUMBA_CUDA
    result = ring_allreduce.allreduce(dx, comm, op=op, algorithm="ring")
    host = result.copy_to_host()
    ok = ok and backends.array_backend(result) == backends.NUMBA_CUDA and host.shape == x.shape
    ok = ok and np.array_equal(host, expected) and np.array_equal(dx.copy_to_host(), x)
    all_ok(comm, ok, f"staged numba-device allreduce ({op}) equals the NumPy allreduce")
    assert_identical(comm, host, "staged numba-device result")
    # in place on the device array
    inplace = ring_allreduce.allreduce(dx, comm, op=op, algorithm="ring", out=dx)
    all_ok(comm, inplace is dx and np.array_equal(dx.copy_to_host(), expected), "in-place staged allreduce")
