"""Recursive doubling AllReduce: log2 p exchanges of the whole vector (latency-optimal for small messages).

Non-power-of-two sizes fold first: in the first 2*rem ranks each even rank hands its data to the odd rank above
and gets the result back at the end. In each exchange both partners compute ``lower op higher`` (IEEE sum,
product, min and max are commutative bit for bit, and the operand order is fixed anyway), so all ranks agree.
"""
from __future__ import annotations

import functools

from .. import schedules
from ._common import _TAG, blocking, byte_buf, isendrecv, scratch


@functools.lru_cache(maxsize=1024)
def _schedule(r: int, p: int):
    # pure in (rank, size); cached because small messages cannot afford rebuilding it every call
    return schedules.fold(r, p), tuple(schedules.recursive_doubling(r, p))


def recursive_doubling_steps(comm, src, dst, op, kernel, div=None, tag=_TAG, pool=None):
    """Recursive doubling as a step sequence (see :mod:`._common`)."""
    p, r = comm.Get_size(), comm.Get_rank()
    f, partners = _schedule(r, p)
    if f.newrank is None:  # even rank of a folded pair: hand over the data, wait for the result
        yield [comm.Isend(byte_buf(src), f.partner, tag)]
        yield [comm.Irecv(byte_buf(dst), f.partner, tag)]
        return
    tmp = scratch(kernel, src.size, src.dtype, 0, pool)
    cur = src
    if f.partner is not None:
        yield [comm.Irecv(byte_buf(tmp), f.partner, tag)]
        kernel.reduce(tmp, cur, dst, op, None if partners else div)
        cur = dst
    for i, partner in enumerate(partners):
        yield isendrecv(comm, cur, partner, tmp, partner, tag)
        last = i == len(partners) - 1
        if partner < r:
            kernel.reduce(tmp, cur, dst, op, div if last else None)
        else:
            kernel.reduce(cur, tmp, dst, op, div if last else None)
        cur = dst
    if f.partner is not None:
        yield [comm.Isend(byte_buf(dst), f.partner, tag)]


recursive_doubling = blocking(recursive_doubling_steps)
