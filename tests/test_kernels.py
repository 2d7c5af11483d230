"""Host reduction kernels against NumPy: every registered NumPy-array kernel x op x dtype x div x aliasing.

Parametrized over the kernel registry itself, so a newly registered host kernel is tested for free. No MPI.
"""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from ring_allreduce import kernels
from tests.kernel_ref import UFUNC, assert_close, reference

HAS_NUMBA = importlib.util.find_spec("numba") is not None
OPS = ("sum", "prod", "min", "max")
DTYPES = ("float16", "float32", "float64", "int32", "int64")


def _host_kernels():
    """(id, factory) for every registered host kernel, plus the Numba kernel forced onto its threaded path."""
    out = [(name, lambda name=name: kernels.get(name)) for name in kernels.names("numpy")]
    if HAS_NUMBA:
        def threaded():
            from ring_allreduce.kernels.numba_cpu import NumbaCpuKernel

            return NumbaCpuKernel(threads=2, parallel_min_bytes=0)

        out.append(("numba[threads=2]", threaded))
    return out


HOST = _host_kernels()


@pytest.fixture(params=[f for _, f in HOST], ids=[i for i, _ in HOST])
def kernel(request):
    return request.param()


def _inputs(n, dtype, op, seed=0):
    rng = np.random.default_rng([seed, n, DTYPES.index(dtype), OPS.index(op)])
    dt = np.dtype(dtype)
    if op == "prod":  # products that neither overflow nor underflow
        return [rng.choice(np.array([1, 1, 2, -1, 3]), size=n).astype(dt) for _ in range(2)]
    if dt.kind == "f":
        return [(rng.standard_normal(n) * 100).astype(dt) for _ in range(2)]
    return [rng.integers(-10**6, 10**6, size=n).astype(dt) for _ in range(2)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
def test_reduce_matches_numpy(kernel, op, dtype):
    for n in (1, 7, 1000, 40_003):
        a, b = _inputs(n, dtype, op)
        for div in (None, 2, 3):
            ref = reference(a, b, op, div)
            out = np.full_like(a, 99)
            kernel.reduce(a, b, out, op, div)
            assert_close(out, ref, dtype, f"{kernel.name} {op} {dtype} n={n} div={div} out-of-place")
            # aliasing: out=a and out=b must give the very same bits as out-of-place
            for alias in ("a", "b"):
                a2, b2 = a.copy(), b.copy()
                target = a2 if alias == "a" else b2
                kernel.reduce(a2, b2, target, op, div)
                np.testing.assert_array_equal(target, out, err_msg=f"{kernel.name} {op} {dtype} n={n} div={div} "
                                                                   f"out={alias} differs from out-of-place")
            assert np.array_equal(a, _inputs(n, dtype, op)[0]) and np.array_equal(b, _inputs(n, dtype, op)[1]), \
                "out-of-place reduce modified its inputs"


@pytest.mark.parametrize("dtype", DTYPES)
def test_scale_matches_numpy(kernel, dtype):
    x, _ = _inputs(5001, dtype, "sum")
    for div in (1, 2, 3, 7):
        ref = reference(x, np.zeros_like(x), "sum", None if div == 1 else div)
        out = np.empty_like(x)
        kernel.scale(x, out, div)
        assert_close(out, ref, dtype, f"{kernel.name} scale {dtype} div={div}")
        inplace = x.copy()
        kernel.scale(inplace, inplace, div)
        np.testing.assert_array_equal(inplace, out, err_msg=f"{kernel.name} in-place scale differs")


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_arrays(kernel, dtype):
    a = np.empty(0, dtype=dtype)
    out = np.empty(0, dtype=dtype)
    for op in OPS:
        kernel.reduce(a, a.copy(), out, op)
        kernel.reduce(a, a.copy(), out, op, 4)
    kernel.scale(a, out, 4)
    assert out.size == 0 and kernel.empty(0, dtype).size == 0


@pytest.mark.parametrize("dtype", ("int32", "int64"))
def test_integer_overflow_wraps_before_floor_division(kernel, dtype):
    """Integers wrap in the dtype's width (as NumPy and MPI_SUM do), then floor-divide: negative results floor."""
    info = np.iinfo(dtype)
    a = np.array([info.max, info.max, info.min, -7, 7, -1], dtype=dtype)
    b = np.array([info.max, 1, -1, 0, -14, 0], dtype=dtype)
    for div in (None, 2, 3):
        out = np.empty_like(a)
        kernel.reduce(a, b, out, "sum", div)
        expected = np.add(a, b) if div is None else np.floor_divide(np.add(a, b), a.dtype.type(div))
        np.testing.assert_array_equal(out, expected, err_msg=f"{kernel.name} {dtype} div={div}")


@pytest.mark.parametrize("dtype", ("float16", "float32", "float64"))
@pytest.mark.parametrize("op", ("min", "max"))
def test_min_max_propagate_nan(kernel, op, dtype):
    a = np.array([np.nan, 1.0, np.nan, -np.inf, 2.0], dtype=dtype)
    b = np.array([1.0, np.nan, np.nan, 3.0, np.inf], dtype=dtype)
    out = np.empty_like(a)
    kernel.reduce(a, b, out, op)
    np.testing.assert_array_equal(out, UFUNC[op](a, b))  # assert_array_equal treats NaN == NaN


def test_copy_and_empty(kernel):
    src = np.arange(17, dtype=np.float32)
    dst = kernel.empty(17, np.float32)
    assert isinstance(dst, np.ndarray) and dst.dtype == np.float32 and dst.shape == (17,)
    kernel.copy(dst, src)
    kernel.synchronize()
    np.testing.assert_array_equal(dst, src)


def test_every_host_kernel_is_parametrized():
    assert "numpy" in kernels.names("numpy")
    assert ("numba" in kernels.names("numpy")) == HAS_NUMBA
    assert all(kernels.get(n).backend == "numpy" for n in kernels.names("numpy"))


def test_gpu_kernels_registered_by_backend_without_building():
    names = kernels.names()
    if HAS_NUMBA:
        assert "numba_cuda" in names and kernels.names("numba_cuda") == ["numba_cuda"]
    assert ("cupy" in names) == (importlib.util.find_spec("cupy") is not None)


def test_import_compiles_and_imports_nothing_heavy():
    code = ("import sys, ring_allreduce, ring_allreduce.kernels as k; k.names('numpy'); "
            "heavy = [m for m in ('numba', 'cupy', 'mpi4py.MPI') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
class TestNumbaThreads:
    def test_local_ranks_from_launcher_variables(self):
        from ring_allreduce.kernels.numba_cpu import local_ranks

        assert local_ranks({}) == 1
        assert local_ranks({"MPI_LOCALNRANKS": "3"}) == 3
        assert local_ranks({"OMPI_COMM_WORLD_LOCAL_SIZE": "4"}) == 4
        assert local_ranks({"SLURM_NTASKS_PER_NODE": "2"}) == 2
        assert local_ranks({"SLURM_TASKS_PER_NODE": "4(x2),3", "SLURM_NODEID": "2"}) == 3
        assert local_ranks({"SLURM_TASKS_PER_NODE": "4(x2),3", "SLURM_NODEID": "1"}) == 4
        assert local_ranks({"MPI_LOCALNRANKS": "", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}) == 2

    def test_default_threads_do_not_oversubscribe(self):
        from ring_allreduce.kernels.numba_cpu import default_threads

        assert default_threads({}, cpus=8) == 8
        assert default_threads({"MPI_LOCALNRANKS": "2"}, cpus=8) == 4
        assert default_threads({"MPI_LOCALNRANKS": "3"}, cpus=8) == 2
        assert default_threads({"MPI_LOCALNRANKS": "16"}, cpus=8) == 1
        assert default_threads({"MPI_LOCALNRANKS": "16", "RING_ALLREDUCE_NUMBA_THREADS": "5"}, cpus=8) == 5
        with pytest.raises(ValueError, match="RING_ALLREDUCE_NUMBA_THREADS"):
            default_threads({"RING_ALLREDUCE_NUMBA_THREADS": "0"}, cpus=8)

    def test_threads_capped_by_numba_pool(self):
        import numba

        from ring_allreduce.kernels.numba_cpu import NumbaCpuKernel

        assert NumbaCpuKernel(threads=10_000).threads == numba.config.NUMBA_NUM_THREADS
        assert NumbaCpuKernel(threads=1).threads == 1

    def test_registered_kernel_uses_launcher_local_size(self):
        env = dict(os.environ, MPI_LOCALNRANKS="1000")
        env.pop("RING_ALLREDUCE_NUMBA_THREADS", None)
        code = "import ring_allreduce.kernels as k; print(k.get('numba').threads)"
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "1"


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
def test_numpy_arrays_default_to_auto_kernel():
    k = kernels.for_backend("numpy")
    assert k.name == (os.environ.get("RING_ALLREDUCE_KERNEL") or "auto")


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
@pytest.mark.parametrize("dtype", DTYPES)
def test_auto_kernel_paths_give_identical_bits(dtype):
    """The size switch between NumPy and Numba must not change a single bit (ranks may take different paths)."""
    from ring_allreduce.kernels.host_auto import HostAutoKernel

    via_numpy = HostAutoKernel(threads=1)
    via_numba = HostAutoKernel(threads=2, parallel_min_bytes=0)
    assert via_numpy.numba_from_bytes is None and via_numba.numba_from_bytes == 0
    for op in OPS:
        a, b = _inputs(4099, dtype, op, seed=7)
        if np.dtype(dtype).kind == "f":
            a[:4] = [np.nan, -0.0, 0.0, np.inf]
            b[:4] = [1.0, 0.0, -0.0, -np.inf]
        for div in (None, 2, 3, 4):  # 2 and 4: Numba multiplies by the exact reciprocal
            o1, o2 = np.empty_like(a), np.empty_like(a)
            with np.errstate(invalid="ignore", over="ignore"):  # inf + -inf is meant
                via_numpy.reduce(a, b, o1, op, div)
                via_numba.reduce(a, b, o2, op, div)
            assert o1.tobytes() == o2.tobytes(), f"{op} {dtype} div={div}: NumPy and Numba paths differ"
