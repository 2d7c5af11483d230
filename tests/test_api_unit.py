"""The public API on one process (COMM_SELF): argument errors before communication, p=1 results, auto table."""
import json

import numpy as np
import pytest

from ring_allreduce import ArgumentError, allreduce
from ring_allreduce.algorithms import auto
from ring_allreduce.ops import DTYPES, OPS

ALGS = ["ring", "tree", "recursive_doubling", "rabenseifner", "mpi", "auto"]


@pytest.fixture(scope="module")
def comm():
    from mpi4py import MPI

    return MPI.COMM_SELF


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("dtype", [str(d) for d in DTYPES])
@pytest.mark.parametrize("op", OPS)
def test_single_rank_is_identity(comm, alg, dtype, op):
    x = (np.arange(12).reshape(3, 4) % 5 + 1).astype(dtype)
    y = allreduce(x, comm, op=op, algorithm=alg)
    assert y.shape == x.shape and y.dtype == x.dtype and y is not x
    np.testing.assert_array_equal(y, x)
    z = x.copy()
    assert allreduce(z, comm, op=op, algorithm=alg, out=z) is z
    np.testing.assert_array_equal(z, x)


@pytest.mark.parametrize("check", [True, False])
def test_argument_errors(comm, check):
    x = np.ones(10, np.float32)
    buf = np.ones(20, np.float32)
    cases = [
        (dict(x=x[::2]), "C-contiguous"),
        (dict(x=x.astype(np.uint8)), "unsupported dtype uint8"),
        (dict(x=[1.0, 2.0]), "expected a NumPy"),
        (dict(x=x, out=np.empty(9, np.float32)), "out has shape"),
        (dict(x=x, out=np.empty(10, np.float64)), "out has shape"),
        (dict(x=x, out=x[::-1]), "C-contiguous"),
        (dict(x=buf[:10], out=buf[5:15]), "overlaps x without being x"),
        (dict(x=x, op="xor"), "unknown op 'xor'; valid ops: sum, avg, prod, min, max"),
        (dict(x=x, algorithm="rnig"), "valid names: .*rabenseifner.*ring"),
    ]
    for kwargs, msg in cases:
        with pytest.raises(ArgumentError, match=msg):
            allreduce(comm=comm, check=check, **kwargs)


def test_mpi_op_objects_accepted(comm):
    from mpi4py import MPI

    x = np.arange(5, dtype=np.int64)
    for op in (MPI.SUM, MPI.PROD, MPI.MIN, MPI.MAX):
        np.testing.assert_array_equal(allreduce(x, comm, op=op), x)
    with pytest.raises(ArgumentError, match="unsupported op"):
        allreduce(x, comm, op=MPI.BXOR)


def test_rejects_intercommunicator_and_non_comm():
    with pytest.raises(ArgumentError, match="intracommunicator"):
        allreduce(np.ones(3), comm="COMM_WORLD")


def test_auto_table_select_and_override(tmp_path):
    try:
        table = {"rules": [{"p_min": 1, "p_max": 2, "max_bytes": 100, "algorithm": "tree"},
                           {"p_min": 3, "max_bytes": None, "dtypes": ["int32"], "algorithm": "rabenseifner"},
                           {"algorithm": "ring"}]}
        path = tmp_path / "t.json"
        path.write_text(json.dumps(table))
        auto.set_table(str(path))
        assert auto.select(100, 2, "float32") == "tree"
        assert auto.select(101, 2, "float32") == "ring"
        assert auto.select(10 ** 9, 3, "int32") == "rabenseifner"
        assert auto.select(10, 3, "float32") == "ring"
        with pytest.raises(ValueError, match="rules"):
            auto.set_table({"rules": []})
    finally:
        auto.set_table(None)
    assert auto.select(8, 2, "float32") in {"ring", "tree", "recursive_doubling", "rabenseifner", "mpi"}


def test_float16_avg_divides_before_summing(comm):
    """At p=1 nothing is summed; the overflow guarantee is tested across ranks in test_allreduce_mpi.py."""
    x = np.full(4, 60000, np.float16)
    np.testing.assert_array_equal(allreduce(x, comm, op="avg"), x)


def test_env_int_records_a_malformed_value_instead_of_raising(monkeypatch):
    from ring_allreduce import settings

    monkeypatch.setenv("RING_ALLREDUCE_TEST_BYTES", "12 KiB")
    try:
        assert settings.env_int("RING_ALLREDUCE_TEST_BYTES", 7) == 7
        assert any("RING_ALLREDUCE_TEST_BYTES" in e for e in settings.env_errors())
        monkeypatch.setenv("RING_ALLREDUCE_TEST_BYTES", "12")
        assert settings.env_int("RING_ALLREDUCE_TEST_BYTES", 7) == 12
        assert not any("RING_ALLREDUCE_TEST_BYTES" in e for e in settings.env_errors())
    finally:
        settings._errors.pop("RING_ALLREDUCE_TEST_BYTES", None)
