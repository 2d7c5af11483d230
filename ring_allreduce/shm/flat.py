"""Shared-memory AllReduce inside one node (what algorithm ``"shm"`` runs when the communicator is one node).

Rank ``r`` owns column ``r`` of the vector (``chunk_bounds(n, p)``). It reads column ``r`` of every rank's input
straight out of the peers' memory, reduces it in rank order ``0, 1, ..., p-1`` (so the float result does not
depend on who computes it) and writes the result to its own output. Each column is computed once, so every rank
ends with identical bytes.

Inputs and outputs are *resident* when every rank's array lies in one shared window (``ring_allreduce.shm``):

- resident input: peers read it in place; otherwise (copy-in) the call runs in rounds of :data:`~ring_allreduce.shm.settings.ROUND_BYTES`:
  each rank copies the other ranks' columns of the round into a cache-sized region of a cached scratch window
  (its own column it reads privately), and results travel back through the same region (see
  :func:`_copy_in_rounds`);
- resident output: the owner of column ``r`` pushes the result into column ``r`` of every rank's output, segment by
  segment while it is in cache; otherwise it writes it into its scratch segment and every rank pulls the other
  columns after the last barrier.

Synchronization, and why no third barrier is needed. Each call has a small ``Allgather`` (A0: each rank's window id
and offsets, so every rank takes the same path) and, for resident input, one barrier B after the reduction;
copy-in rounds have their own two barriers (see :func:`_copy_in_rounds`). Each is surrounded by ``Win.Sync``
(the windows are ``Lock_all``-ed once at creation; the MPI-3 unified model's "sync, barrier, sync" idiom).

- A user buffer of rank ``r`` is touched by peers only between A0 and B of a call (reads of its input column,
  pushes into its output column). A0 cannot complete before ``r`` has finished writing its input and entered the
  call; ``r`` cannot leave B before every peer is done with its buffers. So the user may write its arrays as soon
  as the call returns, and the next call's reads start only after the next A0.
- The scratch window (resident input, private output) is written by ``r`` only after A0 of a call (column
  result) and read by peers up to the end of that call (pulls after B). A write of call ``k+1`` happens after
  A0 of call ``k+1``, which no peer enters before it has finished call ``k``'s pulls: A0 is the fence that makes
  reuse safe.

Within a call, column ``r`` of every buffer is read and written by rank ``r`` alone between A0 and B, and each
segment is fully read before any of its bytes are overwritten, so in-place operation is safe.
"""
from __future__ import annotations

import numpy as np

from .. import schedules
from . import settings
from .column import fence, reduce_column


def _resident(st, gathered, col, mine):
    """The window if every rank's array (columns ``col``, ``col+1`` of ``gathered``) lies in ``mine``'s window."""
    uids = gathered[:, col]
    if mine is None or not np.all(uids == mine[0].uid):
        return None
    w = mine[0]
    ranks = st.window_ranks(w)
    return None if ranks is None else (w, ranks, gathered[:, col + 1])


def _scratch(st, nbytes: int):
    """The comm's copy-in window with at least ``nbytes`` per rank (grown collectively, in powers of two)."""
    from .window import SharedWindow

    w = st.scratch
    if w is None or w.nbytes < nbytes:
        if w is not None:
            st.scratch = None
            w.free()
        size = 1 << max(16, (int(nbytes) - 1).bit_length())
        w = st.scratch = SharedWindow(st.node, size)
    return w


def node_local(comm, st, src, dst, op, kernel, div=None):
    """Allreduce through the node's shared memory; every rank of ``comm`` is on this node (the dispatcher checked)."""
    from .window import lookup

    p, r, n = comm.Get_size(), comm.Get_rank(), src.size
    inplace = dst is src
    xin = lookup(src)
    xout = xin if inplace else lookup(dst)
    info = np.zeros(4, dtype=np.int64)
    if xin is not None:
        info[:2] = xin[0].uid, xin[1]
    if xout is not None:
        info[2:] = xout[0].uid, xout[1]
    touched = {id(v[0]): v[0] for v in (xin, xout) if v is not None}
    fence(touched.values())
    gathered = np.empty((p, 4), dtype=np.int64)
    comm.Allgather(info, gathered)  # A0
    rin = _resident(st, gathered, 0, xin)
    rout = _resident(st, gathered, 2, xout) if not inplace else rin
    if rin is None:
        return _copy_in_rounds(comm, st, src, dst, op, kernel, div)
    b = schedules.chunk_bounds(n, p)
    c0, c1 = b[r], b[r + 1]
    dt, isz = src.dtype, src.itemsize
    work = None
    if rout is None:
        work = _scratch(st, n * isz)
        touched[id(work)] = work
    w, ranks, offs = rin
    ins = [src[c0:c1] if q == r else w.view(ranks[q], int(offs[q]) + c0 * isz, c1 - c0, dt) for q in range(p)]
    if rout is None:
        pushes = [work.view(r, c0 * isz, c1 - c0, dt)]
    else:
        w, ranks, offs = rout
        pushes = [w.view(ranks[q], int(offs[q]) + c0 * isz, c1 - c0, dt) for q in range(p) if q != r]
    reduce_column(ins, dst[c0:c1], pushes, op, kernel, div)
    fence(touched.values())
    comm.Barrier()  # B
    fence(touched.values())
    if rout is None:
        for q in range(p):
            if q != r and b[q + 1] > b[q]:
                kernel.copy(dst[b[q]:b[q + 1]], work.view(q, b[q] * isz, b[q + 1] - b[q], dt))


def _copy_in_rounds(comm, st, src, dst, op, kernel, div):
    """Copy-in path: rounds of :data:`ROUND_BYTES` through two alternating cache-sized regions of the window.

    Per round: copy the other ranks' columns of the round into my region, barrier, reduce my column (into ``dst``
    and my region), barrier, pull the other columns. The regions alternate by a per-communicator round counter:
    round ``k`` overwrites the region of round ``k - 2``, whose last readers (its pulls) finished before they
    entered round ``k - 1``'s first barrier, which this rank has passed; so two barriers per round suffice and
    the data stays in cache between the copy-in and the reduction.
    """
    p, r, n = comm.Get_size(), comm.Get_rank(), src.size
    dt, isz = src.dtype, src.itemsize
    R = max(p, settings.ROUND_BYTES // isz)
    work = _scratch(st, 2 * min(n, R) * isz)
    half = work.nbytes // 2
    for a in range(0, n, R):
        m = min(R, n - a)
        cb = schedules.chunk_bounds(m, p)
        base = (st.rounds % 2) * half
        st.rounds += 1
        reg = work.view(r, base, m, dt)
        c0, c1 = cb[r], cb[r + 1]
        if c0 > 0:  # my own column is read from private memory
            kernel.copy(reg[:c0], src[a:a + c0])
        if c1 < m:
            kernel.copy(reg[c1:], src[a + c1:a + m])
        work.sync()
        comm.Barrier()  # A
        work.sync()
        if c1 > c0:
            ins = [src[a + c0:a + c1] if q == r else work.view(q, base + c0 * isz, c1 - c0, dt) for q in range(p)]
            reduce_column(ins, dst[a + c0:a + c1], [reg[c0:c1]], op, kernel, div)
        work.sync()
        comm.Barrier()  # B
        work.sync()
        for q in range(p):
            if q != r and cb[q + 1] > cb[q]:
                kernel.copy(dst[a + cb[q]:a + cb[q + 1]], work.view(q, base + cb[q] * isz, cb[q + 1] - cb[q], dt))
