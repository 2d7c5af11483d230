"""Shared-memory AllReduce inside one node (algorithm ``"shm"``).

Rank ``r`` owns column ``r`` of the vector (``chunk_bounds(n, p)``). It reads column ``r`` of every rank's input
straight out of the peers' memory, reduces it in rank order ``0, 1, ..., p-1`` (so the float result does not
depend on who computes it) and writes the result to its own output. Each column is computed once, so every rank
ends with identical bytes.

Inputs and outputs are *resident* when every rank's array lies in one shared window (``ring_allreduce.shm``):

- resident input: peers read it in place; otherwise (copy-in) the call runs in rounds of :data:`ROUND_BYTES`:
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

import os

import numpy as np

from .. import schedules
from ..settings import env_int
from ._common import scratch

#: segment for reduce-then-push (cache-sized, so the pushed result is still in cache); env overrides
SEGMENT_BYTES = env_int("RING_ALLREDUCE_SHM_SEGMENT_BYTES", 512 * 1024)
#: round size of the copy-in path (per round, the copied data stays in cache until it is reduced)
ROUND_BYTES = env_int("RING_ALLREDUCE_SHM_ROUND_BYTES", 1024 * 1024)
#: ``auto`` thresholds, measured with benchmarks/shm.py at p=2 (README table): resident arrays from
#: ``RESIDENT_MIN_BYTES`` up go to ``shm`` (below, the flat table's pick is faster: the path has two syncs);
#: ordinary arrays from ``COPY_IN_MIN_BYTES`` up go to the copy-in path, but only when the node is not
#: oversubscribed (its barrier-per-round spins badly when ranks share cores). Environment variables override;
#: ``RING_ALLREDUCE_SHM_COPY_IN_BYTES=-1`` turns the copy-in routing off.
RESIDENT_MIN_BYTES = env_int("RING_ALLREDUCE_SHM_RESIDENT_BYTES", 256 * 1024)
COPY_IN_MIN_BYTES = env_int("RING_ALLREDUCE_SHM_COPY_IN_BYTES", 256 * 1024)
#: below this ``auto`` keeps the flat algorithms even across nodes: the node-aware paths synchronize inside the
#: node on every call, which small messages cannot amortize, and small-message latency must not pay the routing
HIERARCHICAL_MIN_BYTES = env_int("RING_ALLREDUCE_HIERARCHICAL_BYTES", 64 * 1024)
_ROUTE_MIN_BYTES = min(RESIDENT_MIN_BYTES, HIERARCHICAL_MIN_BYTES,
                       COPY_IN_MIN_BYTES if COPY_IN_MIN_BYTES >= 0 else RESIDENT_MIN_BYTES)


def reduce_column(ins, out, pushes, op, kernel, div=None, seg_bytes=None):
    """``out = ins[0] op ins[1] op ... op ins[-1]`` (left to right, ``div`` once at the end), then copy to ``pushes``.

    ``out`` may alias one of ``ins`` and ``pushes`` may alias later ones: each segment is read in full first.
    """
    m = out.size
    if m == 0:
        return
    if len(ins) == 1:
        if div is not None and div != 1:
            kernel.scale(ins[0], out, div)
        elif out is not ins[0]:
            kernel.copy(out, ins[0])
        for o in pushes:
            kernel.copy(o, out)
        return
    seg = max(1024, (seg_bytes or SEGMENT_BYTES) // out.itemsize)
    if len(ins) == 2 and not pushes:
        seg = m
    acc = scratch(kernel, min(seg, m), out.dtype, slot=7) if len(ins) > 2 else None
    last = len(ins) - 1
    for a in range(0, m, seg):
        b = min(a + seg, m)
        o = out[a:b]
        if acc is None:
            kernel.reduce(ins[0][a:b], ins[1][a:b], o, op, div)
        else:
            t = acc[: b - a]
            kernel.reduce(ins[0][a:b], ins[1][a:b], t, op, None)
            for q in range(2, last):
                kernel.reduce(t, ins[q][a:b], t, op, None)
            kernel.reduce(t, ins[last][a:b], o, op, div)
        for dst in pushes:
            kernel.copy(dst[a:b], o)


def _fence(windows) -> None:
    for w in windows:
        w.sync()


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
    from ..shm.window import SharedWindow

    w = st.scratch
    if w is None or w.nbytes < nbytes:
        if w is not None:
            st.scratch = None
            w.free()
        size = 1 << max(16, (int(nbytes) - 1).bit_length())
        w = st.scratch = SharedWindow(st.node, size)
    return w


def shm(comm, src, dst, op, kernel, div=None):
    """Allreduce through the node's shared memory (a communicator spanning nodes goes to ``hierarchical``)."""
    from ..shm import topology
    from ..shm.window import lookup

    st = topology.state(comm)
    p, r, n = comm.Get_size(), comm.Get_rank(), src.size
    if kernel.backend != "numpy":  # device buffers (CUDA-aware MPI): no host shared memory to use
        from .ring import ring

        return ring(comm, src, dst, op, kernel, div)
    if st.node.Get_size() != p:  # same answer on every rank: some rank's node lacks some rank of comm
        from .hierarchical import hierarchical

        return hierarchical(comm, src, dst, op, kernel, div)
    inplace = dst is src
    xin = lookup(src)
    xout = xin if inplace else lookup(dst)
    info = np.zeros(4, dtype=np.int64)
    if xin is not None:
        info[:2] = xin[0].uid, xin[1]
    if xout is not None:
        info[2:] = xout[0].uid, xout[1]
    touched = {id(v[0]): v[0] for v in (xin, xout) if v is not None}
    _fence(touched.values())
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
    _fence(touched.values())
    comm.Barrier()  # B
    _fence(touched.values())
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
    R = max(p, ROUND_BYTES // isz)
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


def route(x, out, comm):
    """Return ``"shm"``/``"hierarchical"`` where ``auto`` should use the node-aware paths for this call, else None.

    Never communicates (it runs before the cross-rank agreement check, which must be the first collective).
    Messages under the smallest threshold return None at once. More than one node with some node holding
    several ranks -> ``"hierarchical"`` from :data:`HIERARCHICAL_MIN_BYTES` up; the node count comes from the
    pretend layout, else from what is cached for ``comm`` (known after ``ring_allreduce.shm.node_count(comm)``,
    a ``shared_empty`` on ``comm`` or a shared-memory call on it), else from the launcher's local-size variables
    for ``COMM_WORLD``. One node: resident NumPy arrays (whatever ``out`` is) from :data:`RESIDENT_MIN_BYTES` up
    -> ``"shm"``; ordinary ones from :data:`COPY_IN_MIN_BYTES` up when the node is known to be one node and not
    oversubscribed (p <= CPUs).
    """
    if not isinstance(x, np.ndarray):
        return None
    nbytes = x.nbytes
    if nbytes < _ROUTE_MIN_BYTES or comm.Get_size() == 1:  # the small-message fast exit: no env or attr lookups
        return None
    from ..shm import topology
    from ..shm.window import lookup

    p = comm.Get_size()
    sizes = topology.known_node_sizes(comm)
    if sizes is not None and len(sizes) > 1:
        # one rank per node: nothing to share, the flat algorithms are the hierarchy
        if max(sizes) == 1 or nbytes < HIERARCHICAL_MIN_BYTES:
            return None
        return "hierarchical"
    if nbytes >= RESIDENT_MIN_BYTES and lookup(x) is not None:
        return "shm"
    if 0 <= COPY_IN_MIN_BYTES <= nbytes and p <= (os.cpu_count() or 1) and sizes is not None:
        return "shm"
    return None
