"""Tree AllReduce: binomial-tree reduce to rank 0, then binomial-tree broadcast (latency log2 p, data not split).

Partial results are always combined as ``lower-rank data op higher-rank data``; rank 0 computes the final value
once and broadcasts it, so every rank ends with identical bytes.
"""
from __future__ import annotations

from .. import schedules
from ._common import _TAG, blocking, byte_buf, scratch


def tree_steps(comm, src, dst, op, kernel, div=None, tag=_TAG, pool=None):
    """The tree as a step sequence (see :mod:`._common`)."""
    p, r = comm.Get_size(), comm.Get_rank()
    node = schedules.binomial_tree(r, p)
    cur = src
    if node.children:
        tmp = scratch(kernel, src.size, src.dtype, 0, pool)
        for i, child in enumerate(node.children):
            yield [comm.Irecv(byte_buf(tmp), child, tag)]
            last = node.parent is None and i == len(node.children) - 1
            kernel.reduce(cur, tmp, dst, op, div if last else None)
            cur = dst
    if node.parent is not None:
        yield [comm.Isend(byte_buf(cur), node.parent, tag)]
        yield [comm.Irecv(byte_buf(dst), node.parent, tag)]
    reqs = [comm.Isend(byte_buf(dst), child, tag) for child in reversed(node.children)]
    if reqs:
        yield reqs


tree = blocking(tree_steps)
