"""Hand-written ring allgather(v) on one preallocated byte buffer (the route for non-summable payloads).

At step k a rank forwards block ``(rank - k) % p`` to its right neighbour and receives block ``(rank - k - 1) % p``
from its left one: p - 1 uppercase ``Sendrecv`` calls, each rank sending every block but its right neighbour's
once, ``sum(counts) - counts[(rank + 1) % p]`` bytes in all.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

_TAG = 0x5243  # "RC": apart from the allreduce algorithms' tag, so a stray message cannot be mistaken for ours


def displacements(counts: Sequence[int]) -> List[int]:
    d = [0]
    for c in counts:
        d.append(d[-1] + int(c))
    return d


def sent_bytes(rank: int, size: int, counts: Sequence[int], itemsize: int = 1) -> int:
    """Bytes :func:`ring_allgather` sends from ``rank`` (the analytical wire size)."""
    if size == 1:
        return 0
    return (sum(counts) - counts[(rank + 1) % size]) * itemsize


def ring_allgather(comm, buf: np.ndarray, counts: Optional[Sequence[int]] = None) -> np.ndarray:
    """Fill every rank's block of ``buf`` in place; this rank's block must hold its own data on entry.

    Args:
        buf: 1-D C-contiguous array holding the blocks of all ranks one after the other.
        counts: elements per rank (variable-size payloads); None means ``buf.size // p`` each.
    """
    from mpi4py import MPI

    p, r = comm.Get_size(), comm.Get_rank()
    if counts is None:
        if buf.size % p:
            raise ValueError(f"buffer of {buf.size} elements does not split into {p} equal blocks; pass counts")
        counts = [buf.size // p] * p
    d = displacements(counts)
    if d[-1] != buf.size:
        raise ValueError(f"counts sum to {d[-1]} but the buffer holds {buf.size} elements")
    right, left = (r + 1) % p, (r - 1) % p
    for k in range(p - 1):
        s, t = (r - k) % p, (r - k - 1) % p
        comm.Sendrecv([buf[d[s]:d[s + 1]], MPI.BYTE], right, _TAG, [buf[d[t]:d[t + 1]], MPI.BYTE], left, _TAG)
    return buf
