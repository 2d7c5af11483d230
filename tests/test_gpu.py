"""GPU kernels on a real CUDA GPU: CuPy and Numba CUDA against NumPy, and the allreduce of CuPy arrays.

Marked ``gpu``: conftest skips these with a reason when CuPy sees no GPU (and RING_ALLREDUCE_REQUIRE_GPU=1 turns
that skip into a failure). The allreduce test runs on ``COMM_WORLD`` at whatever size it has (1 under plain pytest,
which still stages device -> host -> device; more under ``mpiexec ... --with-mpi``).
"""
import importlib.util
import os

import numpy as np
import pytest

from tests.kernel_ref import assert_close, reference

pytestmark = pytest.mark.gpu

OPS = ("sum", "prod", "min", "max")
DTYPES = ("float16", "float32", "float64", "int32", "int64")


def _inputs(n, dtype, op, seed=0):
    rng = np.random.default_rng([seed, n, DTYPES.index(dtype), OPS.index(op)])
    dt = np.dtype(dtype)
    if op == "prod":
        return [rng.choice(np.array([1, 1, 2, -1, 3]), size=n).astype(dt) for _ in range(2)]
    if dt.kind == "f":
        a, b = [(rng.standard_normal(n) * 100).astype(dt) for _ in range(2)]
        if op in ("min", "max"):
            a[::97] = np.nan  # must propagate, as np.minimum/np.maximum do
        return [a, b]
    return [rng.integers(-10**6, 10**6, size=n).astype(dt) for _ in range(2)]


def _run_kernel_matrix(kernel, to_device, to_host, empty):
    n = 100_003  # many blocks, not a multiple of any block size
    for dtype in DTYPES:
        for op in OPS:
            a, b = _inputs(n, dtype, op)
            for div in (None, 3):
                da, db = to_device(a), to_device(b)
                out = empty(n, dtype)
                kernel.reduce(da, db, out, op, div)
                kernel.synchronize()
                got = to_host(out)
                assert_close(got, reference(a, b, op, div), dtype, f"{kernel.name} {op} {dtype} div={div}")
                kernel.reduce(da, db, da, op, div)  # out=a
                kernel.reduce(to_device(a), db, db, op, div)  # out=b
                kernel.synchronize()
                np.testing.assert_array_equal(to_host(da), got, err_msg=f"{kernel.name} {op} {dtype} out=a")
                np.testing.assert_array_equal(to_host(db), got, err_msg=f"{kernel.name} {op} {dtype} out=b")
        x = _inputs(n, dtype, "sum")[0]
        out = empty(n, dtype)
        kernel.scale(to_device(x), out, 4)
        kernel.synchronize()
        assert_close(to_host(out), reference(x, np.zeros_like(x), "sum", 4), dtype, f"{kernel.name} scale {dtype}")
    e = empty(0, "float32")
    kernel.reduce(e, e, e, "sum", 2)
    info = np.iinfo(np.int32)
    a = np.array([info.max, info.min, -7], dtype=np.int32)
    b = np.array([1, -1, 0], dtype=np.int32)
    out = empty(3, "int32")
    kernel.reduce(to_device(a), to_device(b), out, "sum", 2)
    kernel.synchronize()
    np.testing.assert_array_equal(to_host(out), np.floor_divide(np.add(a, b), np.int32(2)))


def test_cupy_kernels_match_numpy():
    import cupy

    from ring_allreduce import kernels

    kernel = kernels.for_backend("cupy")
    assert kernel.name == "cupy"
    _run_kernel_matrix(kernel, cupy.asarray, cupy.asnumpy, lambda n, dt: cupy.empty(n, dtype=dt))


@pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba is not installed")
@pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", reason="the simulator is tested in cudasim")
def test_numba_cuda_kernels_match_numpy():
    from numba import cuda

    from ring_allreduce import kernels

    if not cuda.is_available():
        pytest.skip("CuPy sees a GPU but Numba's CUDA target does not (install numba-cuda)")
    kernel = kernels.for_backend("numba_cuda")
    _run_kernel_matrix(kernel, cuda.to_device, lambda d: d.copy_to_host(),
                       lambda n, dt: cuda.device_array(n, dtype=dt))


@pytest.mark.parametrize("op", ("sum", "avg", "max"))
@pytest.mark.parametrize("dtype", ("float16", "float32", "int64"))
def test_allreduce_cupy_arrays(op, dtype):
    import cupy
    from mpi4py import MPI

    import ring_allreduce
    from tests.mpi_util import all_ok, assert_identical, rank_input

    comm = MPI.COMM_WORLD
    x = rank_input(5, comm.rank, 3003, dtype, op).reshape(3, 1001)
    expected = ring_allreduce.allreduce(x.copy(), comm, op=op, algorithm="ring")
    dx = cupy.asarray(x)
    result = ring_allreduce.allreduce(dx, comm, op=op, algorithm="ring")
    ok = isinstance(result, cupy.ndarray) and result.shape == x.shape
    ok = ok and np.array_equal(cupy.asnumpy(result), expected) and np.array_equal(cupy.asnumpy(dx), x)
    all_ok(comm, ok, f"cupy allreduce ({op}, {dtype}) equals the NumPy allreduce")
    assert_identical(comm, cupy.asnumpy(result), "cupy allreduce result")
    inplace = ring_allreduce.allreduce(dx, comm, op=op, algorithm="ring", out=dx)
    all_ok(comm, inplace is dx and np.array_equal(cupy.asnumpy(dx), expected), "in-place cupy allreduce")


@pytest.mark.parametrize("dtype", ("float32", "float16"))
def test_cupy_vector_sum_equals_the_elementwise_kernel_bit_for_bit(dtype):
    """The vectorized sum/avg (aligned arrays) and the scalar ElementwiseKernel (unaligned views, other ranks'
    segments) must round identically, or ranks could disagree."""
    import cupy

    from ring_allreduce import kernels
    from ring_allreduce.kernels import cupy_kernels

    kernel = kernels.for_backend("cupy")
    rng = np.random.default_rng(3)
    for n in (0, 1, 7, 8, 9, 100_003, 1 << 20):
        a, b = [(rng.standard_normal(n) * 1000).astype(dtype) for _ in range(2)]
        if n > 8:
            a[::101] = np.inf
            b[::103] = np.nan
            a[1::97] = -b[1::97]
        da, db = cupy.asarray(a), cupy.asarray(b)
        for div in (None, 2, 3, 7):
            got = cupy.empty_like(da)
            kernel.reduce(da, db, got, "sum", div)
            ref = cupy.empty_like(da)
            has_div = div is not None and div != 1
            ek = cupy_kernels._reduce_kernel("sum", cupy_kernels._kind(dtype), has_div)
            if n:
                ek(da, db, kernel._divisor(np.dtype(dtype), div), ref) if has_div else ek(da, db, ref)
            bits = np.uint16 if dtype == "float16" else np.uint32
            np.testing.assert_array_equal(cupy.asnumpy(got).view(bits), cupy.asnumpy(ref).view(bits),
                                          err_msg=f"{dtype} n={n} div={div}")
            if n > 1:  # an unaligned view takes the ElementwiseKernel; in place (out = a) the vector kernel
                sub = cupy.empty_like(da[1:])
                kernel.reduce(da[1:], db[1:], sub, "sum", div)
                np.testing.assert_array_equal(cupy.asnumpy(sub).view(bits), cupy.asnumpy(ref[1:]).view(bits),
                                              err_msg=f"{dtype} n={n} div={div} unaligned")
                inplace = da.copy()
                kernel.reduce(inplace, db, inplace, "sum", div)
                np.testing.assert_array_equal(cupy.asnumpy(inplace).view(bits), cupy.asnumpy(ref).view(bits),
                                              err_msg=f"{dtype} n={n} div={div} in place")
    built = cupy_kernels.VECTOR_KERNELS.get(np.dtype(dtype).char)
    assert built is not None and not isinstance(built, str), f"the vector kernel did not run or build: {built}"
