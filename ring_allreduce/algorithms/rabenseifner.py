"""Rabenseifner's AllReduce: recursive-halving reduce-scatter, then recursive-doubling allgather.

Bandwidth like the ring (2(p-1)/p of the data) with log2 p latency; non-power-of-two sizes fold as in
recursive doubling. Each block is finished by one rank and copied to the rest, so all ranks agree bit for bit.
"""
from __future__ import annotations

from .. import schedules
from ._common import _TAG, blocking, byte_buf, isendrecv, scratch


def rabenseifner_steps(comm, src, dst, op, kernel, div=None, tag=_TAG, pool=None):
    """Rabenseifner's algorithm as a step sequence (see :mod:`._common`)."""
    p, r = comm.Get_size(), comm.Get_rank()
    f = schedules.fold(r, p)
    n = src.size
    if f.newrank is None:
        yield [comm.Isend(byte_buf(src), f.partner, tag)]
        yield [comm.Irecv(byte_buf(dst), f.partner, tag)]
        return
    steps = schedules.recursive_halving(r, p, n)
    tmp = scratch(kernel, n, src.dtype, 0, pool)
    cur = src
    if f.partner is not None:
        yield [comm.Irecv(byte_buf(tmp), f.partner, tag)]
        kernel.reduce(tmp, cur, dst, op, None if steps else div)
        cur = dst
    for i, st in enumerate(steps):
        (k0, k1), (s0, s1) = st.keep, st.send
        t = tmp[: k1 - k0]
        yield isendrecv(comm, cur[s0:s1], st.partner, t, st.partner, tag)
        d = div if i == len(steps) - 1 else None
        if st.lower:
            kernel.reduce(cur[k0:k1], t, dst[k0:k1], op, d)
        else:
            kernel.reduce(t, cur[k0:k1], dst[k0:k1], op, d)
        cur = dst
    for st in reversed(steps):
        (k0, k1), (s0, s1) = st.keep, st.send
        yield isendrecv(comm, dst[k0:k1], st.partner, dst[s0:s1], st.partner, tag)
    if f.partner is not None:
        yield [comm.Isend(byte_buf(dst), f.partner, tag)]


rabenseifner = blocking(rabenseifner_steps)
