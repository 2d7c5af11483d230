"""Inputs and settings that used to hang or answer differently: every rank raises the same error, or all are right.

Each case runs under every registered algorithm and ``auto``, through the one-shot ``allreduce`` and through
``allreduce_init``. Settings are read when a communicator's transport is created, so those cases use a fresh
duplicate of COMM_WORLD. A regression that hangs fails by the runner's per-test timeout (thread method).
"""
import numpy as np
import pytest

import ring_allreduce as ra
from ring_allreduce import ArgumentError, MismatchError, algorithms
from tests.mpi_util import all_ok, assert_identical, raised, same_error_everywhere

pytestmark = pytest.mark.mpi

ALGORITHMS = algorithms.names() + ["auto"]
ENTRY = ("allreduce", "allreduce_init")


@pytest.fixture(scope="module")
def comm():
    from mpi4py import MPI

    return MPI.COMM_WORLD


@pytest.fixture
def fresh(comm):
    c = comm.Dup()
    yield c
    c.Free()


def call(entry, x, comm, **kw):
    if entry == "allreduce":
        return ra.allreduce(x, comm, **kw)
    with ra.allreduce_init(x, comm, **kw) as plan:
        return plan()


def need_two(comm):
    if comm.size < 2:
        pytest.skip("needs two ranks to disagree")


@pytest.mark.parametrize("entry", ENTRY)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_read_only_out_on_one_rank(comm, algorithm, entry):
    need_two(comm)
    x = np.ones(1000, np.float32)
    out = np.empty_like(x)
    out.flags.writeable = comm.rank != comm.size - 1
    err = raised(lambda: call(entry, x, comm, algorithm=algorithm, out=out))
    same_error_everywhere(comm, err, ArgumentError, "read-only", f"rank(s) [{comm.size - 1}]")


@pytest.mark.parametrize("entry", ENTRY)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_read_only_x_in_place_on_one_rank(comm, algorithm, entry):
    need_two(comm)
    x = np.ones(1000, np.float64)
    x.flags.writeable = comm.rank != 0
    err = raised(lambda: call(entry, x, comm, algorithm=algorithm, out=x))
    same_error_everywhere(comm, err, ArgumentError, "read-only", "rank(s) [0]")


@pytest.mark.parametrize("entry", ENTRY)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_np_matrix_is_reduced_correctly(comm, algorithm, entry):
    n = 37
    x = np.asmatrix(np.arange(n, dtype=np.float64).reshape(1, n) + comm.rank)
    y = call(entry, x, comm, algorithm=algorithm)
    want = sum(np.arange(n, dtype=np.float64) + q for q in range(comm.size))
    all_ok(comm, np.array_equal(np.asarray(y).reshape(-1), want), f"np.matrix under {algorithm}")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_count_mismatch_between_plans(comm, algorithm):
    need_two(comm)
    n = 10 if comm.rank != 1 else 11
    err = raised(lambda: ra.allreduce_init(np.ones(n, np.float32), comm, algorithm=algorithm))
    same_error_everywhere(comm, err, MismatchError, "count", "11 on rank(s) [1]")


def test_one_shot_call_against_a_plan_is_a_mismatch(comm):
    need_two(comm)
    x = np.ones(8, np.float32)
    if comm.rank == 0:
        err = raised(lambda: ra.allreduce(x, comm, algorithm="ring", check=True))
    else:
        err = raised(lambda: ra.allreduce_init(x, comm, algorithm="ring"))
    same_error_everywhere(comm, err, MismatchError, "call")


@pytest.mark.parametrize("entry", ENTRY)
def test_auto_table_missing_on_one_rank(fresh, monkeypatch, tmp_path, entry):
    need_two(fresh)
    from ring_allreduce.algorithms import auto

    if fresh.rank == fresh.size - 1:
        monkeypatch.setenv("RING_ALLREDUCE_AUTO_TABLE", str(tmp_path / "missing.json"))
        monkeypatch.setattr(auto, "_table", None)
    err = raised(lambda: call(entry, np.ones(100, np.float32), fresh))
    same_error_everywhere(fresh, err, ArgumentError, "auto table", f"rank {fresh.size - 1}")


@pytest.mark.parametrize("entry", ENTRY)
def test_auto_table_malformed_on_one_rank(fresh, monkeypatch, tmp_path, entry):
    need_two(fresh)
    from ring_allreduce.algorithms import auto

    bad = tmp_path / f"bad{fresh.rank}.json"
    bad.write_text('{"rules": [ {"max_bytes": 8, ')
    if fresh.rank == 0:
        monkeypatch.setenv("RING_ALLREDUCE_AUTO_TABLE", str(bad))
        monkeypatch.setattr(auto, "_table", None)
    err = raised(lambda: call(entry, np.ones(100, np.float32), fresh))
    same_error_everywhere(fresh, err, ArgumentError, "auto table", "rank 0")


def test_auto_table_set_differently_after_the_transport_exists(comm, monkeypatch):
    need_two(comm)
    from ring_allreduce.algorithms import auto

    ra.allreduce(np.ones(3), comm)  # the transport exists
    try:
        if comm.rank == 0:
            auto.set_table({"rules": [{"max_bytes": None, "algorithm": "tree"}]})
        err = raised(lambda: ra.allreduce(np.ones(100, np.float32), comm, check=True))
    finally:
        if comm.rank == 0:
            auto.set_table(None)
    same_error_everywhere(comm, err, MismatchError, "auto table")


@pytest.mark.parametrize("algorithm", ["hierarchical", "auto", "ring"])
def test_invalid_pretend_nodes_on_one_rank(fresh, monkeypatch, algorithm):
    need_two(fresh)
    if fresh.rank == fresh.size - 1:
        monkeypatch.setenv("RING_ALLREDUCE_PRETEND_NODES", "two-by-two")
    err = raised(lambda: ra.allreduce(np.ones(100, np.float32), fresh, algorithm=algorithm))
    same_error_everywhere(fresh, err, ArgumentError, "RING_ALLREDUCE_PRETEND_NODES", f"rank {fresh.size - 1}")


def test_pretend_nodes_on_some_ranks_only(fresh, monkeypatch):
    need_two(fresh)
    if fresh.rank == 0:
        monkeypatch.setenv("RING_ALLREDUCE_PRETEND_NODES", f"{fresh.size}x1")
    err = raised(lambda: ra.allreduce(np.ones(100, np.float32), fresh, algorithm="hierarchical"))
    same_error_everywhere(fresh, err, MismatchError, "RING_ALLREDUCE_PRETEND_NODES")


@pytest.mark.parametrize("entry", ENTRY)
def test_check_set_on_some_ranks_only(fresh, monkeypatch, entry):
    need_two(fresh)
    if fresh.rank == 0:
        monkeypatch.setenv("RING_ALLREDUCE_CHECK", "0")
    err = raised(lambda: call(entry, np.ones(5, np.float32), fresh, algorithm="ring"))
    same_error_everywhere(fresh, err, MismatchError, "RING_ALLREDUCE_CHECK")


@pytest.mark.parametrize("attr", ["algorithms.ring:SEGMENT_BYTES", "shm.settings:ROUND_BYTES"])
def test_message_sizes_differing_across_ranks(fresh, monkeypatch, attr):
    need_two(fresh)
    import importlib

    mod, name = attr.split(":")
    m = importlib.import_module(f"ring_allreduce.{mod}")
    if fresh.rank == fresh.size - 1:
        monkeypatch.setattr(m, name, getattr(m, name) * 2)
    err = raised(lambda: ra.allreduce(np.ones(100, np.float32), fresh, algorithm="ring"))
    env = {"algorithms.ring:SEGMENT_BYTES": "RING_ALLREDUCE_SEGMENT_BYTES"}.get(attr, "RING_ALLREDUCE_SHM_ROUND_BYTES")
    same_error_everywhere(fresh, err, MismatchError, env)


@pytest.mark.parametrize("entry", ENTRY)
def test_a_setting_changed_on_one_rank_after_the_transport_exists(comm, monkeypatch, entry):
    need_two(comm)
    import importlib

    ring = importlib.import_module("ring_allreduce.algorithms.ring")
    ra.allreduce(np.ones(3), comm)  # the transport exists and agreed the settings
    if comm.rank == 0:
        monkeypatch.setattr(ring, "SEGMENT_BYTES", ring.SEGMENT_BYTES // 2)
    err = raised(lambda: call(entry, np.ones(123, np.float32), comm, algorithm="ring", check=True)
                 if entry == "allreduce" else call(entry, np.ones(123, np.float32), comm, algorithm="ring"))
    same_error_everywhere(comm, err, MismatchError, "settings", "RING_ALLREDUCE_SEGMENT_BYTES")


def test_absurd_round_bytes_from_the_environment(fresh, monkeypatch):
    """A round of 1 byte never finishes a large call: refused on every rank (here set on every rank)."""
    monkeypatch.setenv("RING_ALLREDUCE_SHM_ROUND_BYTES", "1")
    from ring_allreduce.shm import settings as shm_path

    monkeypatch.setattr(shm_path, "ROUND_BYTES", 1)
    err = raised(lambda: ra.allreduce(np.ones(100, np.float32), fresh, algorithm="shm"))
    same_error_everywhere(fresh, err, ArgumentError, "RING_ALLREDUCE_SHM_ROUND_BYTES")


def test_malformed_segment_bytes_on_one_rank(fresh, monkeypatch):
    need_two(fresh)
    from ring_allreduce import settings

    if fresh.rank == 1:
        monkeypatch.setenv("RING_ALLREDUCE_SEGMENT_BYTES", "1MiB")
        assert settings.env_int("RING_ALLREDUCE_SEGMENT_BYTES", 1 << 20) == 1 << 20  # as the import reads it
    try:
        err = raised(lambda: ra.allreduce(np.ones(100, np.float32), fresh, algorithm="ring"))
    finally:
        settings._errors.pop("RING_ALLREDUCE_SEGMENT_BYTES", None)
    same_error_everywhere(fresh, err, ArgumentError, "RING_ALLREDUCE_SEGMENT_BYTES", "rank 1")


@pytest.mark.parametrize("entry", ENTRY)
def test_shared_window_on_one_rank_plain_arrays_elsewhere(comm, entry):
    """auto routes from where arrays live; ranks that see different routes agree on the flat algorithm."""
    need_two(comm)
    from ring_allreduce.shm import settings as shm_path

    n = max(shm_path.RESIDENT_MIN_BYTES, 1 << 18) // 4 + 3
    src = np.arange(n, dtype=np.float32) % 97 + comm.rank
    w = ra.shared_empty(n, np.float32, comm)  # collective; only rank 0 uses it
    x = w if comm.rank == 0 else np.empty(n, np.float32)
    x[...] = src
    try:
        y = call(entry, x, comm)
        want = sum(np.arange(n, dtype=np.float32) % 97 + q for q in range(comm.size))
        all_ok(comm, np.array_equal(y, want), "mixed residency under auto")
        assert_identical(comm, y)
    finally:
        w.free()


@pytest.mark.parametrize("n", [1, 5, 4096, 65536])
@pytest.mark.parametrize("algorithm", [a for a in ALGORITHMS if a != "mpi"])
def test_nan_and_signed_zero_semantics(comm, algorithm, n):
    """min/max: a NaN anywhere gives NaN; min(-0, +0) = -0 and max = +0, at every size and under every algorithm."""
    need_two(comm)
    x = np.full(n, 2.0, np.float32)
    x[0] = np.nan if comm.rank == 1 else 1.0
    if n > 2:
        x[1] = -0.0 if comm.rank == 0 else 0.0
        x[2] = 0.0 if comm.rank == 0 else -0.0
    lo = ra.allreduce(x, comm, op="min", algorithm=algorithm)
    hi = ra.allreduce(x, comm, op="max", algorithm=algorithm)
    ok = bool(np.isnan(lo[0]) and np.isnan(hi[0]))
    if n > 2:
        ok = ok and all(np.signbit(lo[1:3])) and not any(np.signbit(hi[1:3]))
    all_ok(comm, ok, f"NaN/signed-zero semantics under {algorithm} at n={n}: {lo[:3]} {hi[:3]}")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_nonblocking_plans_in_flight_together(comm, algorithm):
    """Several started plans progress together (own tags, own scratch) and give the blocking result."""
    sizes = (3, 1000, 70000)
    xs = [np.arange(n, dtype=np.float64) * (comm.rank + 1) for n in sizes]
    plans = [ra.allreduce_init(x, comm, algorithm=algorithm) for x in xs]
    try:
        for pl in plans:
            pl.start()
        for _ in range(3):
            for pl in plans:
                pl.test()
        got = [pl.wait() for pl in reversed(plans)][::-1]
        f = comm.size * (comm.size + 1) // 2
        ok = all(np.array_equal(g, np.arange(n, dtype=np.float64) * f) for g, n in zip(got, sizes))
        all_ok(comm, ok, f"nonblocking plans under {algorithm}")
        again = [pl() for pl in plans]
        all_ok(comm, all(np.array_equal(a, g) for a, g in zip(again, got)), "blocking run of the same plans")
    finally:
        for pl in plans:
            pl.free()


def test_iallreduce_and_user_messages_on_the_same_communicator(comm):
    """The plan's messages travel on the transport's duplicate: a user's wildcard receive never catches them."""
    need_two(comm)
    from mpi4py import MPI

    right, left = (comm.rank + 1) % comm.size, (comm.rank - 1) % comm.size
    box = np.zeros(1, np.int64)
    rreq = comm.Irecv(box, MPI.ANY_SOURCE, MPI.ANY_TAG)
    req = ra.iallreduce(np.ones(5000, np.float32), comm, algorithm="ring")
    y = req.wait()
    comm.Send(np.array([comm.rank], np.int64), right, tag=7)
    rreq.Wait()
    all_ok(comm, np.array_equal(y, np.full(5000, comm.size, np.float32)) and box[0] == left, "isolated messages")
