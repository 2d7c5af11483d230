"""Pieces of the shared-memory path that need no MPI: layout parsing and the column reduction."""
import numpy as np
import pytest

from ring_allreduce.shm.column import reduce_column
from ring_allreduce.errors import ArgumentError
from ring_allreduce.kernels import get
from ring_allreduce.shm import parse_layout
from ring_allreduce.shm.topology import env_layout


@pytest.mark.parametrize("spec,size,want", [("2x2", 4, (2, 2)), ("3,2", 5, (3, 2)), ("3+2", 5, (3, 2)),
                                            ("1x4", 4, (4,)), ("4x1", 4, (1, 1, 1, 1)), ((2, 1), 3, (2, 1)),
                                            (" 2 X 3 ", 6, (3, 3)), ("", 3, None), (None, 3, None)])
def test_parse_layout(spec, size, want):
    assert parse_layout(spec, size) == want


@pytest.mark.parametrize("spec,size", [("2x2", 5), ("0x3", 0), ("3,0", 3), ("two", 2), ("2x", 2)])
def test_parse_layout_rejects(spec, size):
    with pytest.raises(ArgumentError):
        parse_layout(spec, size)


def test_env_layout_for_another_size_is_ignored(monkeypatch):
    monkeypatch.setenv("RING_ALLREDUCE_PRETEND_NODES", "2x2")
    assert env_layout(4) == (2, 2) and env_layout(3) is None
    monkeypatch.setenv("RING_ALLREDUCE_PRETEND_NODES", "nonsense")
    with pytest.raises(ArgumentError):
        env_layout(4)


@pytest.mark.parametrize("p", [1, 2, 3, 5])
@pytest.mark.parametrize("seg", [4096, 10 ** 9])
def test_reduce_column_order_aliasing_and_pushes(p, seg):
    """Left-to-right order in the dtype, div once, output aliasing an input, pushes get the same bytes."""
    k = get("numpy")
    rng = np.random.default_rng(p)
    m = 5000
    ins = [rng.standard_normal(m).astype(np.float32) for _ in range(p)]
    want = ins[0].copy()
    for q in range(1, p):
        want = want + ins[q]
    want = want / np.float32(3)
    originals = [a.copy() for a in ins]
    out = ins[p - 1] if p > 1 else np.empty(m, np.float32)  # the last input doubles as the output
    pushes = [np.empty(m, np.float32), ins[0]] if p > 1 else [np.empty(m, np.float32)]
    srcs = originals if p == 1 else ins
    reduce_column(srcs, out, pushes, "sum", k, div=3, seg_bytes=seg)
    assert np.array_equal(out, want)
    assert all(np.array_equal(o, want) for o in pushes)


def test_reduce_column_ints_floor_divide():
    k = get("numpy")
    ins = [np.array([1, -7, 5], np.int64), np.array([2, 0, 5], np.int64)]
    out = np.empty(3, np.int64)
    reduce_column(ins, out, [], "sum", k, div=2)
    assert out.tolist() == [1, -4, 5]
