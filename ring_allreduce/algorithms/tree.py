"""Tree AllReduce: binomial-tree reduce to rank 0, then binomial-tree broadcast (latency log2 p, data not split).

Partial results are always combined as ``lower-rank data op higher-rank data``; rank 0 computes the final value
once and broadcasts it, so every rank ends with identical bytes.
"""
from __future__ import annotations

from .. import schedules
from ._common import recv, scratch, send


def tree(comm, src, dst, op, kernel, div=None):
    p, r = comm.Get_size(), comm.Get_rank()
    node = schedules.binomial_tree(r, p)
    cur = src
    if node.children:
        tmp = scratch(kernel, src.size, src.dtype)
        for i, child in enumerate(node.children):
            recv(comm, tmp, child)
            last = node.parent is None and i == len(node.children) - 1
            kernel.reduce(cur, tmp, dst, op, div if last else None)
            cur = dst
    if node.parent is not None:
        send(comm, cur, node.parent)
        recv(comm, dst, node.parent)
    for child in reversed(node.children):
        send(comm, dst, child)
