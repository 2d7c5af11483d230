"""Ring AllReduce: reduce-scatter then allgather around the ring (bandwidth-optimal: 2(p-1)/p of the data each way).

Each chunk is reduced exactly once per rank along the ring and the final value is computed by one rank and copied
to the others, so every rank ends with identical bytes. The reduce-scatter is segmented: each chunk travels as
segments of ``segment_bytes`` so the received segment is still in cache when it is reduced, and the receive of the
next segment is posted before the current one is reduced. The last reduce-scatter step is fused with the first
allgather step: each segment of the chunk this rank finishes is sent on to the right neighbour as soon as it is
reduced, while the left neighbour's finished segments arrive straight in place (at p=2 that is the whole
allgather), so no rank waits for a whole chunk before passing it on.
"""
from __future__ import annotations

from .. import schedules
from ..settings import env_int
from ._common import _TAG, blocking, byte_buf, isendrecv, overlaps, scratch

#: default segment size for the pipelined reduce-scatter (measured with ``ring-allreduce bench``: MPICH's
#: single-copy path for large messages has a per-message cost, so segments well above the L2 size win here);
#: override per call or with $RING_ALLREDUCE_SEGMENT_BYTES
SEGMENT_BYTES = env_int("RING_ALLREDUCE_SEGMENT_BYTES", 1 << 20)


def ring_steps(comm, src, dst, op, kernel, div=None, segment_bytes=None, tag=_TAG, pool=None):
    """The ring as a step sequence (see :mod:`._common`): every wait is a ``yield`` of the requests it needs."""
    p, r = comm.Get_size(), comm.Get_rank()
    n = src.size
    # at most ~1024 segments a chunk: every segment is an outstanding request
    seg = max(1, (segment_bytes or SEGMENT_BYTES) // src.itemsize, -(-n // (1024 * p)))
    rs = schedules.ring_reduce_scatter(r, p, n)
    ag = schedules.ring_allgather(r, p, n)
    for k, step in enumerate(rs):
        # at step 0 the chunk we send is still our own input; afterwards it is one we reduced into dst
        frm = src if k == 0 else dst
        (s0, s1), (c0, c1) = step.send, step.recv
        last = k == len(rs) - 1
        fwd = ag[0] if last else None
        yield from _exchange_and_reduce(comm, frm[s0:s1], step.dest, step.source, src[c0:c1], dst[c0:c1],
                                        op, kernel, div if last else None, seg, fwd, dst, tag, pool)
    for step in ag[1:]:
        (s0, s1), (c0, c1) = step.send, step.recv
        yield isendrecv(comm, dst[s0:s1], step.dest, dst[c0:c1], step.source, tag)


ring = blocking(ring_steps)


def _segments(a: int, b: int, seg: int):
    return [(i, min(i + seg, b)) for i in range(a, b, seg)]


def _exchange_and_reduce(comm, sendbuf, dest, source, mine, out, op, kernel, div, seg, fwd, dst, tag, pool):
    """Send ``sendbuf`` to ``dest`` and set ``out = received op mine`` segment by segment, double-buffered.

    With ``fwd`` (the first allgather step), each finished segment of ``out`` goes on to ``fwd.dest`` at once and
    the segments of ``dst[fwd.recv]`` are received from ``fwd.source`` meanwhile.
    """
    isend, irecv = comm.Isend, comm.Irecv
    ftag = tag + 1  # finished segments forwarded into the allgather (never confused with reduce-scatter ones)
    m = out.size
    fin, fsends, late = [], [], []
    if fwd is not None:
        f0, f1 = fwd.recv
        late = _segments(f0, f1, seg)
        # in place at p=2 the allgather lands where our own reduce-scatter segments are still being sent from:
        # receive segment j only once our send of segment j has completed (MPI forbids writing a send buffer
        # before that); otherwise post every receive now, since the left neighbour may finish before we do
        if not overlaps(sendbuf, dst[f0:f1]):
            fin = [irecv(byte_buf(dst[a:b]), fwd.source, ftag) for a, b in late]
            late = []
    # both sides split a chunk into the same seg-sized messages, so a one-segment chunk is one exchange
    if m <= seg and sendbuf.size <= seg:
        tmp = scratch(kernel, m, mine.dtype, 0, pool)
        yield isendrecv(comm, sendbuf, dest, tmp, source, tag)
        kernel.reduce(tmp, mine, out, op, div)
        if fwd is not None and m:
            fsends.append(isend(byte_buf(out), fwd.dest, ftag))
        fin += [irecv(byte_buf(dst[a:b]), fwd.source, ftag) for a, b in late]
    else:
        bufs = (scratch(kernel, seg, mine.dtype, 0, pool), scratch(kernel, seg, mine.dtype, 1, pool))
        sreqs = [isend(byte_buf(sendbuf[a:b]), dest, tag) for a, b in _segments(0, sendbuf.size, seg)]
        parts = _segments(0, m, seg)

        def post(j):
            a, b = parts[j]
            return irecv(byte_buf(bufs[j % 2][: b - a]), source, tag)

        rreqs = [post(j) for j in range(min(2, len(parts)))]
        for j, (a, b) in enumerate(parts):
            yield [rreqs[j]]
            kernel.reduce(bufs[j % 2][: b - a], mine[a:b], out[a:b], op, div)
            if j + 2 < len(parts):
                rreqs.append(post(j + 2))
            if fwd is not None:
                fsends.append(isend(byte_buf(out[a:b]), fwd.dest, ftag))
                if late and j < len(sreqs):  # same chunk boundaries and seg: send j covers receive j
                    yield [sreqs[j]]
                    fin.append(irecv(byte_buf(dst[late[j][0]:late[j][1]]), fwd.source, ftag))
        if late:
            yield sreqs
            fin += [irecv(byte_buf(dst[a:b]), fwd.source, ftag) for a, b in late[len(fin):]]
        yield sreqs
    if fin or fsends:
        yield fin + fsends
