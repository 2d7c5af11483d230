"""Selection table for ``algorithm="auto"``: choose by message size, rank count and dtype.

The table is JSON: ``{"rules": [{"p_min": 1, "p_max": null, "dtypes": null, "max_bytes": 4096,
"algorithm": "recursive_doubling"}, ...]}``; the first rule whose rank range, dtype list and ``max_bytes``
(null = no limit) match wins. The package ships a default measured with ``ring-allreduce bench --tune``; the
environment variable ``RING_ALLREDUCE_AUTO_TABLE`` or :func:`set_table` points at another file.
"""
from __future__ import annotations

import json
import os
import zlib
from importlib import resources

_table = None


def _validate(table) -> dict:
    if not isinstance(table, dict) or not isinstance(table.get("rules"), list) or not table["rules"]:
        raise ValueError("auto table must be a JSON object with a non-empty 'rules' list")
    for rule in table["rules"]:
        if "algorithm" not in rule:
            raise ValueError(f"auto table rule without 'algorithm': {rule}")
    return table


def load_table(path=None) -> dict:
    """Read a selection table (the shipped default when ``path`` is None)."""
    if path is None:
        text = resources.files("ring_allreduce").joinpath("data/auto_table.json").read_text()
    else:
        with open(path) as fh:
            text = fh.read()
    return _validate(json.loads(text))


def set_table(table_or_path=None) -> None:
    """Use this table (a dict or a path); None goes back to ``$RING_ALLREDUCE_AUTO_TABLE`` or the default."""
    global _table, _digest
    from .._registry import changed

    changed()
    _digest = None
    if table_or_path is None or isinstance(table_or_path, (str, os.PathLike)):
        _table = None if table_or_path is None else load_table(table_or_path)
    else:
        _table = _validate(table_or_path)


def table() -> dict:
    global _table
    if _table is None:
        _table = load_table(os.environ.get("RING_ALLREDUCE_AUTO_TABLE") or None)
    return _table


_digest = None


def digest() -> int:
    """A 32-bit digest of the table's rules (part of the signature ranks agree on); raises if it cannot load."""
    global _digest
    t = table()
    if _digest is None or _digest[0] is not t:
        _digest = (t, zlib.crc32(json.dumps(t.get("rules"), sort_keys=True).encode()) & 0xFFFFFFFF)
    return _digest[1]


#: float min/max never resolve to the native algorithm: its NaN and signed-zero results are the MPI library's
#: (MPICH drops a NaN depending on operand order), the hand-written ones follow the kernels' semantics
_FLOAT_MINMAX_SMALL, _FLOAT_MINMAX_LARGE, _FLOAT_MINMAX_SPLIT = "recursive_doubling", "ring", 1 << 20


def resolve(nbytes: int, size: int, dtype, op: str) -> str:
    """The algorithm ``auto`` runs for this size, rank count, dtype and op (the table's pick, see :data:`resolve`)."""
    name = select(nbytes, size, dtype)
    if name == "mpi" and (op == "min" or op == "max") and dtype.kind == "f":
        name = _FLOAT_MINMAX_SMALL if nbytes <= _FLOAT_MINMAX_SPLIT else _FLOAT_MINMAX_LARGE
    return name


def select(nbytes: int, size: int, dtype) -> str:
    """Return the algorithm name the table picks for a message of ``nbytes`` on ``size`` ranks."""
    dt = str(dtype)
    for rule in table()["rules"]:
        if size < rule.get("p_min", 1):
            continue
        if rule.get("p_max") is not None and size > rule["p_max"]:
            continue
        if rule.get("dtypes") and dt not in rule["dtypes"]:
            continue
        if rule.get("max_bytes") is not None and nbytes > rule["max_bytes"]:
            continue
        return rule["algorithm"]
    return "ring"
