"""Ring AllReduce: reduce-scatter then allgather around the ring (bandwidth-optimal: 2(p-1)/p of the data each way).

Each chunk is reduced exactly once per rank along the ring and the final value is computed by one rank and copied
to the others, so every rank ends with identical bytes. The reduce-scatter is segmented: each chunk travels as
segments of ``segment_bytes`` so the received segment is still in cache when it is reduced, and the receive of the
next segment is posted before the current one is reduced.
"""
from __future__ import annotations

import os

from .. import schedules
from ._common import _TAG, byte_buf, scratch, sendrecv

#: default segment size for the pipelined reduce-scatter (tuned with benchmarks/; override per call or by env)
SEGMENT_BYTES = int(os.environ.get("RING_ALLREDUCE_SEGMENT_BYTES", 256 * 1024))


def ring(comm, src, dst, op, kernel, div=None, segment_bytes=None):
    p, r = comm.Get_size(), comm.Get_rank()
    n = src.size
    seg = max(1, (segment_bytes or SEGMENT_BYTES) // src.itemsize)
    rs = schedules.ring_reduce_scatter(r, p, n)
    for k, step in enumerate(rs):
        # at step 0 the chunk we send is still our own input; afterwards it is one we reduced into dst
        frm = src if k == 0 else dst
        (s0, s1), (c0, c1) = step.send, step.recv
        last = k == len(rs) - 1
        _exchange_and_reduce(comm, frm[s0:s1], step.dest, step.source, src[c0:c1], dst[c0:c1],
                             op, kernel, div if last else None, seg)
    for step in schedules.ring_allgather(r, p, n):
        (s0, s1), (c0, c1) = step.send, step.recv
        sendrecv(comm, dst[s0:s1], step.dest, dst[c0:c1], step.source)


def _exchange_and_reduce(comm, sendbuf, dest, source, mine, out, op, kernel, div, seg):
    """Send ``sendbuf`` to ``dest`` and set ``out = received op mine`` segment by segment, double-buffered."""
    from mpi4py import MPI

    m = mine.size
    # both sides split a chunk into the same seg-sized messages, so a one-segment chunk may use Sendrecv
    if m <= seg and sendbuf.size <= seg:
        tmp = scratch(kernel, m, mine.dtype)
        sendrecv(comm, sendbuf, dest, tmp, source)
        kernel.reduce(tmp, mine, out, op, div)
        return
    bufs = (scratch(kernel, seg, mine.dtype, 0), scratch(kernel, seg, mine.dtype, 1))
    nsend = sendbuf.size
    sreqs = [comm.Isend(byte_buf(sendbuf[i:i + seg]), dest, _TAG) for i in range(0, nsend, seg)]
    starts = list(range(0, m, seg))

    def post(j):
        a = starts[j]
        return comm.Irecv(byte_buf(bufs[j % 2][: min(seg, m - a)]), source, _TAG)

    rreqs = [post(0)] + ([post(1)] if len(starts) > 1 else [])
    for j, a in enumerate(starts):
        rreqs[j].Wait()
        b = min(a + seg, m)
        kernel.reduce(bufs[j % 2][: b - a], mine[a:b], out[a:b], op, div)
        if j + 2 < len(starts):
            rreqs.append(post(j + 2))
    MPI.Request.Waitall(sreqs)
