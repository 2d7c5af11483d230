"""Rabenseifner's AllReduce: recursive-halving reduce-scatter, then recursive-doubling allgather.

Bandwidth like the ring (2(p-1)/p of the data) with log2 p latency; non-power-of-two sizes fold as in
recursive doubling. Each block is finished by one rank and copied to the rest, so all ranks agree bit for bit.
"""
from __future__ import annotations

from .. import schedules
from ._common import recv, scratch, send, sendrecv


def rabenseifner(comm, src, dst, op, kernel, div=None):
    p, r = comm.Get_size(), comm.Get_rank()
    f = schedules.fold(r, p)
    n = src.size
    if f.newrank is None:
        send(comm, src, f.partner)
        recv(comm, dst, f.partner)
        return
    steps = schedules.recursive_halving(r, p, n)
    tmp = scratch(kernel, n, src.dtype)
    cur = src
    if f.partner is not None:
        recv(comm, tmp, f.partner)
        kernel.reduce(tmp, cur, dst, op, None if steps else div)
        cur = dst
    for i, st in enumerate(steps):
        (k0, k1), (s0, s1) = st.keep, st.send
        t = tmp[: k1 - k0]
        sendrecv(comm, cur[s0:s1], st.partner, t, st.partner)
        d = div if i == len(steps) - 1 else None
        if st.lower:
            kernel.reduce(cur[k0:k1], t, dst[k0:k1], op, d)
        else:
            kernel.reduce(t, cur[k0:k1], dst[k0:k1], op, d)
        cur = dst
    for st in reversed(steps):
        (k0, k1), (s0, s1) = st.keep, st.send
        sendrecv(comm, dst[k0:k1], st.partner, dst[s0:s1], st.partner)
    if f.partner is not None:
        send(comm, dst, f.partner)
