"""Device buffers without a GPU: every algorithm on the fake asynchronous device (kernels run only at sync).

A buffer MPI reads before the stream that wrote it is synchronized holds stale bytes, so these tests fail when a
synchronization is missing (the last test shows that they do). Both device paths run: handed to MPI directly
(``RING_ALLREDUCE_CUDA_AWARE=1``) and staged through host memory.
"""
import numpy as np
import pytest

import ring_allreduce as ra
from ring_allreduce import algorithms
from tests import fake_device as fd
from tests.mpi_util import all_ok, assert_identical, rank_input

pytestmark = pytest.mark.mpi

ALGORITHMS = algorithms.names() + ["auto"]
CASES = [(1, "float64", "sum"), (7, "int64", "max"), (1000, "float32", "avg"), (70001, "float64", "sum"),
         (4099, "float16", "avg"), (333, "int32", "min")]


@pytest.fixture(scope="module")
def comm():
    from mpi4py import MPI

    return MPI.COMM_WORLD


@pytest.fixture(autouse=True)
def device():
    fd.install()
    yield
    fd.uninstall()


def reference(comm, n, dtype, op, algorithm, aware):
    """The same call on host arrays (same algorithm, NumPy kernel): the device result must equal it bit for bit.

    Device buffers handed to MPI never take the node-aware paths (``shm``/``hierarchical`` fall back to the ring),
    and ``auto`` takes the table's flat pick for device arrays, so the reference runs what the device runs.
    """
    from ring_allreduce.algorithms import auto

    x = rank_input(n, comm.rank, n, dtype, op)
    if algorithm in ("shm", "hierarchical") and aware == "1":
        algorithm = "ring"
    elif algorithm == "auto":
        algorithm = auto.resolve(x.nbytes, comm.size, x.dtype, op)
    return ra.allreduce(x, comm, op=op, algorithm=algorithm, kernel="numpy")


def _skip(algorithm, dtype):
    if algorithm == "mpi" and dtype == "float16":
        pytest.skip("MPICH has no float16 datatype for the native reduction")


@pytest.mark.parametrize("aware", ["1", "0"])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("entry", ["allreduce", "plan", "start"])
def test_device_paths_of_every_algorithm(comm, monkeypatch, algorithm, aware, entry):
    monkeypatch.setenv("RING_ALLREDUCE_CUDA_AWARE", aware)
    for n, dtype, op in CASES:
        _skip(algorithm, dtype)
        want = reference(comm, n, dtype, op, algorithm, aware)
        x = fd.to_device(rank_input(n, comm.rank, n, dtype, op))  # written by a queued copy, not yet run
        if entry == "allreduce":
            y = ra.allreduce(x, comm, op=op, algorithm=algorithm)
        else:
            with ra.allreduce_init(x, comm, op=op, algorithm=algorithm) as plan:
                x2 = fd.to_device(rank_input(n, comm.rank, n, dtype, op))  # plans read x at run time
                fd.stream.launch(lambda: np.copyto(x.host, x2.host))
                y = plan() if entry == "plan" else plan.start().wait()
        got = fd._to_host(y)  # no synchronize here: the call must have left the result complete
        same = got.tobytes() == want.tobytes()
        if not same and entry == "start" and algorithm in ("mpi", "auto") and np.dtype(dtype).kind == "f":
            # native MPI_Iallreduce may add in another order than the reference's MPI_Allreduce (Open MPI does at
            # p=5): equal to rounding; every rank still holds the same bytes (assert_identical below)
            eps = np.finfo(np.dtype(dtype)).eps
            same = np.allclose(got.astype(np.float64), want.astype(np.float64), rtol=8 * comm.size * eps,
                               atol=8 * comm.size * eps * float(np.abs(want.astype(np.float64)).max(initial=0)))
        all_ok(comm, same,
               f"{algorithm} {entry} aware={aware} n={n} {dtype} {op}: device result equals the host one")
        assert_identical(comm, got)


def test_a_missing_synchronization_is_caught(comm, monkeypatch):
    """Remove the transport's synchronizations: the fake device must then give a wrong result."""
    if comm.size < 2:
        pytest.skip("one rank sends nothing")
    from ring_allreduce import transport
    from ring_allreduce.plan import Schedule

    monkeypatch.setenv("RING_ALLREDUCE_CUDA_AWARE", "1")
    monkeypatch.setattr(transport, "_ready", lambda spec: None)
    monkeypatch.setattr(fd.FakeDeviceKernel, "synchronize", lambda self: None)
    n = 5000
    want = reference(comm, n, "float64", "sum", "ring", "1")
    x = fd.to_device(rank_input(n, comm.rank, n, "float64", "sum"))
    y = ra.allreduce(x, comm, algorithm="ring")
    fd.stream.synchronize()
    wrong = fd._to_host(y).tobytes() != want.tobytes()
    assert all(comm.allgather(wrong)), "the fake device did not expose the missing synchronization"
    assert Schedule  # the module the synchronizations live in was imported (patch applied to the real path)


@pytest.mark.parametrize("aware", ["1", "0"])
def test_a_host_call_with_the_same_signature_does_not_capture_the_device_call(comm, monkeypatch, aware):
    """One-shot calls cache what they resolved per signature; a host array's entry must not serve a device array."""
    monkeypatch.setenv("RING_ALLREDUCE_CUDA_AWARE", aware)
    x = rank_input(3, comm.rank, 501, "float32", "sum")
    want = ra.allreduce(x, comm, algorithm="ring")  # plain sums: the default host kernel gives NumPy's bits
    y = ra.allreduce(fd.to_device(x), comm, algorithm="ring")
    ok = isinstance(y, fd.FakeDeviceArray) and fd._to_host(y).tobytes() == want.tobytes()
    all_ok(comm, ok, "device call after a host call of the same signature")
