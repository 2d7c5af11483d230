"""Reduction operators and dtypes: names, codes for the cross-rank check, and the matching MPI objects."""
from __future__ import annotations

import numpy as np

from .errors import ArgumentError

#: Operators in a fixed order; the index is the code exchanged by the agreement check.
OPS = ("sum", "avg", "prod", "min", "max")
#: Supported dtypes in a fixed order; the index is the code exchanged by the agreement check.
DTYPES = tuple(np.dtype(t) for t in ("float16", "float32", "float64", "int32", "int64"))


def normalize_op(op) -> str:
    """Return the op's name (``"sum"``, ``"avg"``, ...) for a name or a matching ``MPI.Op`` object."""
    if isinstance(op, str):
        name = op.lower()
        if name == "mean":
            name = "avg"
        if name in OPS:
            return name
        raise ArgumentError(f"unknown op {op!r}; valid ops: {', '.join(OPS)} (or MPI.SUM/PROD/MIN/MAX)")
    from mpi4py import MPI

    for name, mpi_op in (("sum", MPI.SUM), ("prod", MPI.PROD), ("min", MPI.MIN), ("max", MPI.MAX)):
        if op == mpi_op:
            return name
    raise ArgumentError(f"unsupported op {op!r}; valid ops: {', '.join(OPS)} (or MPI.SUM/PROD/MIN/MAX)")


_MPI_OPS: dict = {}


def mpi_op(name: str):
    """Return the ``MPI.Op`` that computes ``name`` (``avg`` is a sum followed by a division)."""
    if not _MPI_OPS:  # built once: this sits on the small-message path
        from mpi4py import MPI

        _MPI_OPS.update({"sum": MPI.SUM, "avg": MPI.SUM, "prod": MPI.PROD, "min": MPI.MIN, "max": MPI.MAX})
    return _MPI_OPS[name]


def check_dtype(dtype) -> np.dtype:
    """Return ``dtype`` as a NumPy dtype if supported, else raise naming the supported ones."""
    dt = np.dtype(dtype)
    if dt not in DTYPES:
        raise ArgumentError(f"unsupported dtype {dt}; supported: {', '.join(str(d) for d in DTYPES)}")
    return dt


def dtype_code(dt: np.dtype) -> int:
    return DTYPES.index(np.dtype(dt))


def op_code(name: str) -> int:
    return OPS.index(name)
