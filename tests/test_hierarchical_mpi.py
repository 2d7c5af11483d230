"""``algorithm="hierarchical"`` on pretend node layouts, under ``mpiexec -n N`` (N = 1..5).

Layouts are functions of p: one node (``1xP``), one rank per node (``Px1``) and two halves (``2x2`` at p=4,
``3+2`` at p=5), set through ``RING_ALLREDUCE_PRETEND_NODES`` as a user would. Floats: p-1 roundings in any
summation tree, so the bound of ``tests/test_allreduce_mpi.py`` applies.
"""
import numpy as np
import pytest

from ring_allreduce import allreduce, shm
from ring_allreduce.shm.dispatch import route
from ring_allreduce.ops import OPS
from tests.mpi_util import all_ok, rank_input
from tests.test_shm_mpi import DTYPES, Checks, check

pytestmark = pytest.mark.mpi


def layout(kind, p):
    if kind == "one":
        return f"1x{p}"
    if kind == "per_rank":
        return f"{p}x1"
    return f"{(p + 1) // 2}+{p // 2}" if p > 1 else "1"


@pytest.fixture
def comm():
    from mpi4py import MPI

    c = MPI.COMM_WORLD.Dup()
    yield c
    c.Free()


@pytest.mark.parametrize("kind", ["per_rank", "halves"])  # one node is the shm path: tests/test_shm_mpi.py
@pytest.mark.parametrize("dtype", DTYPES)
def test_layouts_every_op_and_count(comm, monkeypatch, kind, dtype):
    p = comm.size
    monkeypatch.setenv(shm.ENV_PRETEND, layout(kind, p))
    c = Checks(comm)
    for n in sorted({0, 1, max(p - 1, 1), 7 * p + 3, 1000}):
        for op in OPS:
            for inplace in (False, True):
                seed = 31 + n
                x = rank_input(seed, comm.rank, n, dtype, op)
                y = x.copy()
                res = allreduce(y, comm, op=op, algorithm="hierarchical", out=y if inplace else None)
                c.ok((res is y) if inplace else np.array_equal(y, x), "input/output")
                c.result(res, n, dtype, op, seed, f"hierarchical {kind} {dtype} {op} n={n} inplace={inplace}")
    c.done()


@pytest.mark.parametrize("kind", ["one", "per_rank", "halves"])
def test_layouts_large_and_resident(comm, monkeypatch, kind):
    p = comm.size
    monkeypatch.setenv(shm.ENV_PRETEND, layout(kind, p))
    n = 1_000_003
    for dtype in ("float32", "int64"):
        x = rank_input(41, comm.rank, n, dtype)
        check(comm, allreduce(x, comm, algorithm="hierarchical"), n, dtype, "sum", 41, f"large {kind} {dtype}")
        with shm.shared_empty(n, dtype, comm) as a:
            a[:] = x
            allreduce(a, comm, out=a)  # auto: hierarchical for a multi-node layout, shm for one node
            check(comm, a, n, dtype, "sum", 41, f"large resident auto {kind} {dtype}")


def test_layout_argument_and_reuse(comm):
    """Direct calls with layout=: alternate layouts and many calls reuse the cached communicators and windows."""
    from ring_allreduce.shm.dispatch import hierarchical
    from ring_allreduce.kernels import get

    p = comm.size
    if p == 1:
        pytest.skip("p == 1 never reaches an algorithm")
    k = get("numpy")
    ok = True
    for i in range(40):
        spec = layout(("one", "per_rank", "halves")[i % 3], p)
        x = np.full(37, comm.rank + i, np.int64)
        out = np.empty_like(x)
        hierarchical(comm, x, out, "sum", k, None, layout=spec)
        ok = ok and bool(np.all(out == p * i + p * (p - 1) // 2))
    all_ok(comm, ok, "layout argument")


def test_auto_picks_hierarchical_for_several_nodes(comm, monkeypatch):
    from ring_allreduce.shm.settings import HIERARCHICAL_MIN_BYTES

    p = comm.size
    x = np.ones(HIERARCHICAL_MIN_BYTES // 4, np.float32)
    small = np.ones(100, np.float32)  # below the threshold the flat algorithms keep small-message latency
    monkeypatch.setenv(shm.ENV_PRETEND, layout("halves", p))
    got, got_small = route(x, None, comm), route(small, None, comm)
    want = "hierarchical" if p >= 3 else None  # p=2 halves is 1+1: one rank per node, flat is the hierarchy
    monkeypatch.setenv(shm.ENV_PRETEND, layout("per_rank", p))
    got1 = route(x, None, comm)
    all_ok(comm, got == want and got1 is None and got_small is None, f"auto route {got} {got1} {got_small}")


def test_bad_layout_is_an_error(comm):
    from ring_allreduce.errors import ArgumentError

    with pytest.raises(ArgumentError):
        shm.parse_layout("2x9", comm.size + 100)
    x = np.ones(4)
    try:
        allreduce(x, comm, algorithm="hierarchical")  # no layout: the real node, so shm inside it
        ok = bool(np.all(x == 1))
    except Exception:
        ok = False
    all_ok(comm, ok, "real-node hierarchical")
