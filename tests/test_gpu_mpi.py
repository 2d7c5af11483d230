"""Device arrays (CuPy and Numba CUDA) through every algorithm under mpiexec, on a real GPU.

Marked ``gpu`` and ``mpi``: ``tests/run.py --tiers gpu`` runs them at 2 and 3 ranks sharing the one GPU. Each case
is checked against the same algorithm on host copies of the same inputs (bit for bit: the device path stages through
host memory, so it must be the host result exactly), against ``MPI.Allreduce`` for integers, and for identical
bytes on every rank. One-shot calls, persistent plans (pinned staging buffers) and nonblocking plans are covered.
"""
import numpy as np
import pytest

from tests.mpi_util import all_ok, assert_identical, rank_input

pytestmark = [pytest.mark.gpu, pytest.mark.mpi]


def _algorithms():
    from ring_allreduce import algorithms

    return algorithms.names() + ["auto"]


def _device(backend):
    """(to_device, to_host) for ``backend``, or a skip when it cannot run here."""
    if backend == "cupy":
        import cupy

        return cupy.asarray, cupy.asnumpy
    from numba import cuda

    if not cuda.is_available():
        pytest.skip("CuPy sees a GPU but Numba's CUDA target does not (install numba-cuda)")
    return cuda.to_device, lambda d: d.copy_to_host()


def _refill(d, host):
    """Copy ``host`` into the device array ``d`` in place."""
    if hasattr(d, "copy_to_device"):
        d.copy_to_device(host)
    else:
        d.set(host)


@pytest.mark.parametrize("backend", ("cupy", "numba_cuda"))
@pytest.mark.parametrize("algorithm", _algorithms())
@pytest.mark.parametrize("dtype,op", (("float32", "sum"), ("float32", "avg"), ("float16", "avg"), ("int64", "sum"),
                                      ("float64", "max")))
def test_device_allreduce_equals_the_host_run(backend, algorithm, dtype, op):
    from mpi4py import MPI

    import ring_allreduce

    comm = MPI.COMM_WORLD
    to_device, to_host = _device(backend)
    for n in (0, 1, max(comm.size - 1, 1), 100_003):
        x = rank_input(11, comm.rank, n, dtype, op)
        expected = ring_allreduce.allreduce(x.copy(), comm, op=op, algorithm=algorithm)
        if dtype == "int64" and op == "sum":
            native = np.empty_like(x)
            comm.Allreduce(x, native, MPI.SUM)
            all_ok(comm, np.array_equal(expected, native), f"host {algorithm} int64 equals MPI.Allreduce (n={n})")
        dx = to_device(x)
        got = ring_allreduce.allreduce(dx, comm, op=op, algorithm=algorithm)
        ok = np.array_equal(to_host(got), expected, equal_nan=True) and np.array_equal(to_host(dx), x)
        all_ok(comm, ok, f"{backend} {algorithm} {op} {dtype} n={n}: device result equals the host run")
        assert_identical(comm, to_host(got), f"{backend} {algorithm} n={n}")
        x2 = rank_input(12, comm.rank, n, dtype, op)
        expected2 = ring_allreduce.allreduce(x2.copy(), comm, op=op, algorithm=algorithm)
        with ring_allreduce.allreduce_init(dx, comm, op=op, algorithm=algorithm) as plan:
            first = to_host(plan())
            _refill(dx, x2)  # a plan reduces the buffer's current contents: the second run must stage them again
            second = to_host(plan.start().wait())
        _refill(dx, x)
        all_ok(comm, np.array_equal(first, expected, equal_nan=True)
               and np.array_equal(second, expected2, equal_nan=True),
               f"{backend} {algorithm} {op} {dtype} n={n}: plan (blocking, then nonblocking on new contents) equals "
               f"the host run")
        ring_allreduce.allreduce(dx, comm, op=op, algorithm=algorithm, out=dx)
        all_ok(comm, np.array_equal(to_host(dx), expected, equal_nan=True), f"{backend} {algorithm} in place n={n}")
