"""Checkpoint files: round trip, atomic replacement, no pickle, per-component state flattening."""
import os

import numpy as np
import pytest

from ring_allreduce.train import checkpoint as ckpt


def test_round_trip_keeps_bytes_and_metadata(tmp_path):
    p = str(tmp_path / "c" / ckpt.FILENAME)
    arrays = {"params": np.random.default_rng(0).standard_normal(17).astype(np.float32),
              "hook.r0.memory": np.arange(5, dtype=np.float64), "hook.r0.step": np.asarray(3)}
    meta = {"epoch": 2, "history": [{"loss": 0.1 + 0.2}], "big": 2 ** 100}
    ckpt.save(p, arrays, meta)
    a2, m2 = ckpt.load(p)
    assert m2 == meta  # floats round-trip exactly through JSON (repr), big ints too
    assert set(a2) == set(arrays)
    for k in arrays:
        assert a2[k].dtype == arrays[k].dtype and a2[k].tobytes() == arrays[k].tobytes()
    assert os.path.exists(str(tmp_path / "c" / "checkpoint.json"))
    assert not [f for f in os.listdir(tmp_path / "c") if f.startswith(".tmp-")]


def test_second_save_replaces_the_first(tmp_path):
    p = str(tmp_path / ckpt.FILENAME)
    ckpt.save(p, {"x": np.zeros(3)}, {"step": 1})
    ckpt.save(p, {"x": np.ones(3)}, {"step": 2})
    a, m = ckpt.load(p)
    assert m["step"] == 2 and a["x"].tolist() == [1, 1, 1]


def test_a_failed_write_leaves_the_old_file(tmp_path):
    p = str(tmp_path / ckpt.FILENAME)
    ckpt.save(p, {"x": np.zeros(3)}, {"step": 1})
    with pytest.raises(TypeError):
        ckpt.save(p, {"x": np.zeros(3)}, {"step": object()})  # not JSON: fails before replacing
    with pytest.raises(ValueError):
        ckpt.save(p, {"x": np.array([object()], dtype=object)}, {"step": 3})  # object arrays need pickle
    a, m = ckpt.load(p)
    assert m["step"] == 1
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


def test_pickled_arrays_are_refused(tmp_path):
    p = str(tmp_path / "evil.npz")
    np.savez(p, x=np.array([{"a": 1}], dtype=object), __meta__=np.frombuffer(b"{}", dtype=np.uint8))
    with pytest.raises(ValueError):
        ckpt.load(p)


def test_state_flattening_round_trip():
    d = {"memory": np.arange(4.0), "count": 7, "lr": 0.5, "name": "sign"}
    flat = ckpt.flatten_state("hook.r1.", d)
    assert set(flat) == {"hook.r1.memory", "hook.r1.count", "hook.r1.lr", "hook.r1.name"}
    back = ckpt.unflatten_state("hook.r1.", flat)
    assert back["count"] == 7 and back["lr"] == 0.5 and back["name"] == "sign"
    assert np.array_equal(back["memory"], d["memory"])
    with pytest.raises(TypeError, match="hook.r1.bad"):
        ckpt.flatten_state("hook.r1.", {"bad": {"nested": 1}})
