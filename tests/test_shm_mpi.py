"""Shared-memory arrays and the ``"shm"`` allreduce path, under ``mpiexec -n N`` (N = 1..5).

Results are checked against ``MPI.Allreduce`` (integers, exactly) and a float64 reference with the summation bound
of ``tests/test_allreduce_mpi.py`` (the shm path adds in rank order: p-1 roundings, the same bound), and must be
bit-identical on every rank.
"""
import hashlib
import resource
import threading

import numpy as np
import pytest

from ring_allreduce import allreduce, shm
from ring_allreduce.shm.dispatch import route
from ring_allreduce.errors import MismatchError
from ring_allreduce.ops import OPS
from tests.mpi_util import all_ok, assert_identical, rank_input
from tests.test_allreduce_mpi import reference

pytestmark = pytest.mark.mpi
DTYPES = ["float16", "float32", "float64", "int32", "int64"]


@pytest.fixture
def comm():
    """A private duplicate of COMM_WORLD, freed at the end (which also frees what was cached on it)."""
    from mpi4py import MPI

    c = MPI.COMM_WORLD.Dup()
    yield c
    c.Free()


def counts(p):
    return sorted({0, 1, max(p - 1, 1), 7 * p + 3, 1000})


def check(comm, res, n, dtype, op, seed, what):
    ref, bound = reference(comm, n, dtype, op, seed)
    err = np.abs(np.asarray(res, dtype=np.float64).reshape(-1) - ref)
    all_ok(comm, bool(np.all(err <= bound)), f"{what} (max err {err.max() if n else 0})")
    assert_identical(comm, np.asarray(res), what)


class Checks:
    """Collect many local checks and result digests; ``done()`` asserts them collectively in two collectives."""

    def __init__(self, comm):
        self.comm, self.bad, self.digests = comm, [], []

    def ok(self, ok, what):
        if not ok:
            self.bad.append(what)

    def result(self, res, n, dtype, op, seed, what):
        ref, bound = reference(self.comm, n, dtype, op, seed)
        err = np.abs(np.asarray(res, dtype=np.float64).reshape(-1) - ref)
        self.ok(bool(np.all(err <= bound)), f"{what} (max err {err.max() if n else 0})")
        self.digests.append((what, hashlib.sha1(np.ascontiguousarray(res).tobytes()).hexdigest()))

    def done(self):
        all_ok(self.comm, not self.bad, f"{len(self.bad)} checks: {self.bad[:5]}")
        every = self.comm.allgather(self.digests)
        differing = sorted({w for d in every for (w, h), (_, h0) in zip(d, every[0]) if h != h0})
        all_ok(self.comm, not differing, f"results differ across ranks: {differing[:5]}")


def test_shared_array_basics(comm):
    p, r = comm.size, comm.rank
    with shm.shared_empty((3, 4), np.float64, comm) as a:
        ok = isinstance(a, shm.SharedArray) and a.shape == (3, 4) and a.dtype == np.float64
        a[:] = r
        hit = shm.lookup(a[1:])
        ok = ok and hit is not None and hit[0] is a.window and hit[1] == 4 * 8
        ok = ok and shm.lookup(np.zeros(3)) is None and shm.lookup(np.empty_like(a)) is None
        ok = ok and np.empty_like(a).window is None
        w = a.window
        w.sync()
        comm.Barrier()
        w.sync()
        peers = [float(w.view(q, 0, 12, np.float64)[5]) for q in range(w.comm.Get_size())]
        ok = ok and peers == [float(q) for q in range(p)]  # one node here: window rank == comm rank
        live = shm.live_windows()
    all_ok(comm, ok and shm.live_windows() == live - 1 and w.freed, "shared array basics")
    z = shm.shared_zeros(5, "int32", comm)
    all_ok(comm, bool(np.all(z == 0)) and z.dtype == np.int32, "shared_zeros")
    z.free()
    z.free()  # idempotent


def test_allocator_frees_everything(comm):
    before = shm.live_windows()
    with shm.SharedAllocator(comm) as alloc:
        arrays = [alloc(n, dt) for n, dt in ((10, np.float32), (7, np.float64), (100, np.int64))]
        ok = all(a.shape == (n,) and a.dtype == dt and shm.lookup(a) is not None
                 for a, (n, dt) in zip(arrays, ((10, np.float32), (7, np.float64), (100, np.int64))))
        ok = ok and alloc.live == 3 and shm.live_windows() == before + 3
    all_ok(comm, ok and shm.live_windows() == before, "allocator")


@pytest.mark.parametrize("dtype", DTYPES)
def test_resident_every_op_count_and_mode(comm, dtype):
    """Resident in place, resident into resident out, resident into a private out, via auto and explicit shm."""
    p = comm.size
    c = Checks(comm)
    for n in counts(p):
        with shm.shared_empty(n, dtype, comm) as a, shm.shared_empty(n, dtype, comm) as b:
            for op in OPS:
                seed = 11 + n
                x = rank_input(seed, comm.rank, n, dtype, op)
                for mode in ("inplace", "resident_out", "private_out"):
                    a[:] = x
                    alg = "shm"  # auto routes resident arrays here only from 256 KiB: test_auto_routing
                    if mode == "inplace":
                        res = allreduce(a, comm, op=op, algorithm=alg, out=a)
                        ok = res is a
                    elif mode == "resident_out":
                        res = allreduce(a, comm, op=op, algorithm=alg, out=b)
                        ok = res is b and np.array_equal(a, x)
                    else:
                        res = allreduce(a, comm, op=op, algorithm=alg)
                        ok = shm.lookup(res) is None and np.array_equal(a, x)
                    c.ok(ok, f"{mode} {dtype} {op} n={n} output/input")
                    c.result(res, n, dtype, op, seed, f"{mode} {dtype} {op} n={n}")
    c.done()


@pytest.mark.parametrize("dtype", DTYPES)
def test_copy_in_every_op_count(comm, dtype):
    """Ordinary arrays through algorithm='shm' (copy into the cached window, reduce, copy out)."""
    p = comm.size
    c = Checks(comm)
    for n in counts(p):
        for op in OPS:
            for inplace in (False, True):
                seed = 5 + n
                x = rank_input(seed, comm.rank, n, dtype, op)
                y = x.copy()
                res = allreduce(y, comm, op=op, algorithm="shm", out=y if inplace else None)
                c.ok((res is y) if inplace else np.array_equal(y, x), "copy-in input/output")
                c.result(res, n, dtype, op, seed, f"copy-in {dtype} {op} n={n} inplace={inplace}")
    c.done()


def test_copy_in_many_small_rounds(comm, monkeypatch):
    """Rounds of 64 bytes: many rounds per call, both regions, round parity carried across calls."""
    from ring_allreduce.shm import settings as shm_path

    monkeypatch.setattr(shm_path, "ROUND_BYTES", 64)
    c = Checks(comm)
    for n in (1, 15, 16, 17, 100, 333):
        for dtype, op in (("float32", "sum"), ("int64", "avg"), ("float64", "max"), ("int32", "prod")):
            x = rank_input(n, comm.rank, n, dtype, op)
            y = x.copy()
            res = allreduce(y, comm, op=op, algorithm="shm", out=y if n % 2 else None)
            c.result(res, n, dtype, op, n, f"rounds {dtype} {op} n={n}")
    c.done()


def test_mixed_residency_falls_back_consistently(comm):
    """Explicit 'shm' with only rank 0 resident: every rank takes the copy-in path, result still exact."""
    n = 1000
    x = rank_input(3, comm.rank, n, "int64")
    with shm.shared_empty(n, np.int64, comm) as a:
        a[:] = x
        y = a if comm.rank == 0 else x.copy()
        res = allreduce(y, comm, algorithm="shm", out=y)
        check(comm, res, n, "int64", "sum", 3, "mixed residency")


def test_mixed_residency_under_auto_agrees_or_is_a_clear_error(comm):
    """Only rank 0 resident under auto: ranks either all take shm (copy-in routing) or all raise MismatchError."""
    if comm.size == 1:
        pytest.skip("needs two ranks")
    n = 100_000  # 400 KB: above the routing thresholds
    with shm.shared_empty(n, np.float32, comm) as a:
        a[:] = 1
        y = a if comm.rank == 0 else np.ones(n, np.float32)
        try:
            res = allreduce(y, comm, check=True)
            outcome = bool(np.all(res == comm.size))
        except MismatchError as e:
            outcome = "shm" in str(e)
        outcomes = comm.allgather(outcome)
        all_ok(comm, outcome is True and len(set(outcomes)) == 1, f"mixed residency outcomes {outcomes}")


def test_large_resident_and_copy_in(comm):
    n = 1_000_003
    for dtype in ("float32", "int64"):
        x = rank_input(21, comm.rank, n, dtype)
        with shm.shared_empty(n, dtype, comm) as a:
            a[:] = x
            allreduce(a, comm, out=a)
            check(comm, a, n, dtype, "sum", 21, f"large resident {dtype}")
        check(comm, allreduce(x, comm, algorithm="shm"), n, dtype, "sum", 21, f"large copy-in {dtype}")


def test_no_leak_across_1000_calls(comm):
    n = 257
    live0 = shm.live_windows()
    a = shm.shared_empty(n, np.int64, comm)
    x = np.arange(n, dtype=np.int64)
    allreduce(x, comm, algorithm="shm")  # creates the cached copy-in window
    live = shm.live_windows()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ok = True
    for i in range(1000):
        a[:] = i
        allreduce(a, comm, out=a, check=False)
        ok = ok and int(a[0]) == i * comm.size
        if i % 10 == 0:
            ok = ok and int(allreduce(x, comm, algorithm="shm", check=False)[5]) == 5 * comm.size
    for _ in range(50):
        with shm.shared_empty(n, np.float32, comm) as b:
            b[:] = 1
            allreduce(b, comm, out=b, check=False)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
    ok = ok and shm.live_windows() == live and grown_kib < 20_000
    a.free()
    shm.release(comm)  # the cached copy-in window goes too
    all_ok(comm, ok and shm.live_windows() == live0, f"no leak (live {shm.live_windows()}, rss +{grown_kib} KiB)")


def test_comm_free_frees_cached_windows():
    from mpi4py import MPI

    base = shm.live_windows()
    c = MPI.COMM_WORLD.Dup()
    allreduce(np.ones(10), c, algorithm="shm")
    mid = shm.live_windows()
    c.Free()
    made = 1 if MPI.COMM_WORLD.size > 1 else 0  # p == 1 never reaches an algorithm
    all_ok(MPI.COMM_WORLD, mid == base + made and shm.live_windows() == base, "freed with the communicator")


def test_two_communicators_from_two_threads():
    """Each thread reduces its own data on its own communicator; nothing crosses over."""
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    if MPI.Query_thread() != MPI.THREAD_MULTIPLE:
        pytest.skip("needs MPI_THREAD_MULTIPLE")
    comms = [world.Dup(), world.Dup()]
    arrays = [shm.shared_empty(1000, np.int64, c) for c in comms]
    for c in comms:  # create the cached copy-in windows here: Open MPI aborts on concurrent window creation
        allreduce(np.ones(999, np.int64), c, algorithm="shm")
    results = [True, True]

    def work(k):
        try:
            c, a = comms[k], arrays[k]
            for i in range(30):
                a[:] = (k + 1) * 1000 + i + c.rank
                allreduce(a, c, out=a, check=False)
                p = c.size
                want = p * ((k + 1) * 1000 + i) + p * (p - 1) // 2
                results[k] = results[k] and bool(np.all(a == want))
                y = np.full(999, k + 1, np.int64)
                results[k] = results[k] and bool(np.all(allreduce(y, c, algorithm="shm", check=False) == p * (k + 1)))
        except Exception:
            results[k] = False

    threads = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a in arrays:
        a.free()
    for c in comms:
        c.Free()
    all_ok(world, all(results), f"two threads, two communicators {results}")


def test_interleaved_communicators_same_shape(comm):
    other = comm.Dup()
    try:
        a = shm.shared_empty(100, np.float64, comm)
        b = shm.shared_empty(100, np.float64, other)
        ok = True
        for i in range(20):
            a[:] = comm.rank + i
            b[:] = -comm.rank - 2 * i
            allreduce(a, comm, out=a)
            allreduce(b, other, out=b)
            p = comm.size
            ok = ok and np.all(a == p * i + p * (p - 1) / 2) and np.all(b == -(2 * p * i + p * (p - 1) / 2))
        a.free()
        b.free()
    finally:
        other.Free()
    all_ok(comm, bool(ok), "interleaved communicators")


def test_auto_routing(comm):
    from ring_allreduce.shm import settings as shm_path

    big = shm_path.RESIDENT_MIN_BYTES // 4 + 1
    with shm.shared_empty(big, np.float32, comm) as a, shm.shared_empty(10, np.float32, comm) as small:
        got = route(a, None, comm)
        want = None if comm.size == 1 else "shm"
        ok = got == want and route(small, None, comm) is None and route(np.ones(10, np.float32), None, comm) is None
        all_ok(comm, ok, f"route {got}")
