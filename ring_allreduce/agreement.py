"""The cross-rank agreement check run before the first data message.

Each rank packs (local error?, count, dtype, op, algorithm) into two int64 words; one native ``MPI.Allreduce``
with ``MAX`` over ``[words, -words]`` yields every field's maximum and minimum in a single 32-byte collective.
Only when they differ (or some rank's arguments were invalid) does a second, pickled ``allgather`` collect the
details, so that every rank raises the same error naming the differing ranks and values.
"""
from __future__ import annotations

import zlib

import numpy as np

from .errors import ArgumentError, MismatchError

_FIELDS = ("count", "dtype", "op", "algorithm", "resolved", "kernel", "auto table", "call", "settings")


def algorithm_code(name: str) -> int:
    return zlib.crc32(name.encode()) & 0xFFFFFFFF


def pack(error: bool, count: int, dtype_code: int, op_code: int, algo_code: int) -> np.ndarray:
    """Pack the fields into two int64 words: ``[count, algo << 16 | dtype << 8 | op << 1 | error]``."""
    w1 = (algo_code << 16) | ((dtype_code & 0xFF) << 8) | ((op_code & 0x7F) << 1) | int(bool(error))
    return np.array([count, w1], dtype=np.int64)


def check(comm, words: np.ndarray, details: dict, error: Exception = None) -> None:
    """Raise the same ``MismatchError``/``ArgumentError`` on every rank unless all ranks agree and none failed.

    ``details`` holds this rank's readable values (for messages); ``error`` its local validation error, if any.
    """
    from mpi4py import MPI

    buf = np.concatenate([words, -words])
    comm.Allreduce(MPI.IN_PLACE, buf, MPI.MAX)
    if agreed(buf):
        return
    explain(comm, details, error)


def agreed(buf: np.ndarray) -> bool:
    """Whether the reduced ``[max(words), max(-words)]`` shows the same words on every rank and no error bit."""
    b = buf.tolist()  # four Python ints: cheaper to compare than NumPy slices on the small-message path
    k = len(b) // 2
    return not (b[1] & 1) and all(b[i] == -b[k + i] for i in range(k))


def explain(comm, details: dict, error: Exception = None) -> None:
    """After a failed :func:`agreed` (the same on every rank): gather the details and raise the same error everywhere."""
    everyone = comm.allgather((details, None if error is None else [f"{type(error).__name__}: {error}"]))
    raise_differences(everyone, _FIELDS, "allreduce arguments", str)


def raise_differences(everyone, fields, what: str, show=repr) -> None:
    """From every rank's ``(values dict, problems or None)``: raise the same ArgumentError (a rank had problems) or
    MismatchError (values differ) on every rank, naming ranks and values; return when all agree."""
    failed = [(r, pr) for r, (_, pr) in enumerate(everyone) if pr]
    if failed:
        lines = "; ".join(f"rank {r}: {', '.join(pr)}" for r, pr in failed)
        raise ArgumentError(f"{what} invalid on rank(s) {[r for r, _ in failed]}: {lines}")
    diffs = {}
    for field in fields:
        values = {r: d.get(field) for r, (d, _) in enumerate(everyone)}
        if len(set(map(show, values.values()))) > 1:
            diffs[field] = values
    if not diffs:
        return
    parts = []
    for field, values in diffs.items():
        groups = {}
        for r, v in values.items():
            groups.setdefault(show(v), []).append(r)
        parts.append(f"{field}: " + ", ".join(f"{v} on rank(s) {rs}" for v, rs in groups.items()))
    raise MismatchError(f"ranks disagree on {what}: " + "; ".join(parts), diffs)
