"""Node-aware AllReduce (algorithm ``"hierarchical"``): shared memory inside each node, messages between nodes.

With ``m`` nodes whose smallest has ``K`` ranks, the vector is cut into ``K`` slices. Inside each node, local
rank ``l < K`` reduces slice ``l`` of every local rank's input (in local-rank order; an input resident in a
window the whole node maps is read in place, the others are first copied into a shared scratch window) into its
own scratch segment; then the ranks with local rank ``l`` on every node run a flat allreduce on slice ``l``
among themselves (ring, or what the ``auto`` table picks for that size and ``m``), in place in the
shared segment; finally every rank of the node copies all ``K`` reduced slices out. So all ``K`` cores of a node
drive the inter-node step at once (NCCL/Horovod-style, each owning a slice), not one leader. Local ranks ``>= K``
(uneven nodes) contribute their input and receive the result.

Order of reduction: within a node by local rank, then across nodes in the flat algorithm's fixed order; each
slice's final bytes are computed by one cross-node allreduce that leaves identical bytes on all its ranks, and
copied from there, so every rank ends identical. ``div`` (avg) is applied once, in the cross-node step.

Synchronization: two node syncs per call (A, an ``Allgather`` of where each input lives, after the copy-in; B,
a barrier after the cross step), each between ``Win.Sync`` calls. A resident input is read by peers only
between A and B, so the user may change it once the call returns. The scratch window is double-buffered by
call parity: call ``c`` writes buffer ``c % 2`` before its sync A; the last readers of that buffer (the pulls
of call ``c - 2``) finished before they entered sync A of call ``c - 1``, which this rank has passed, so no third
barrier is needed.

The layout: real nodes, or pretend ones from ``layout=`` / ``$RING_ALLREDUCE_PRETEND_NODES`` (see
:mod:`ring_allreduce.shm.topology`). The node and cross communicators and the scratch windows are cached on
``comm`` and freed with it or by ``ring_allreduce.shm.release(comm)``.
"""
from __future__ import annotations

import numpy as np

from .. import schedules
from .column import fence, reduce_column

_FLAT_OK = ("ring", "tree", "recursive_doubling", "rabenseifner", "mpi")


def _cross_algorithm(nbytes: int, m: int, dtype, op):
    from ..algorithms import auto, get

    name = auto.resolve(nbytes, m, dtype, op)
    return get(name if name in _FLAT_OK else "ring")


def _scratch(h, parity: int, nbytes: int):
    from .window import SharedWindow

    w = h.scratch[parity]
    if w is None or w.nbytes < nbytes:
        if w is not None:
            h.scratch[parity] = None
            w.free()
        size = 1 << max(16, (int(nbytes) - 1).bit_length())
        w = h.scratch[parity] = SharedWindow(h.node, size)
    return w


def across_nodes(h, src, dst, op, kernel, div=None):
    """Reduce inside each node through shared memory, across nodes by slice, then copy out (see module doc);
    ``h`` is the layout's :class:`~ring_allreduce.shm.topology.Hier` with more than one node."""
    from .window import lookup

    n, node = src.size, h.node
    s, l, K = node.Get_size(), node.Get_rank(), h.slices
    sb = schedules.chunk_bounds(n, K)
    mine = (sb[l], sb[l + 1]) if l < K else (0, 0)
    if s == 1:  # alone on the node: the whole vector is slice 0
        if dst is not src:
            kernel.copy(dst, src)
        _cross(h, dst, op, kernel, div)
        return
    parity = h.calls % 2
    h.calls += 1
    dt, isz = src.dtype, src.itemsize
    work = _scratch(h, parity, n * isz)
    own = work.view(l, 0, n, dt)
    c0, c1 = mine
    res = _usable(node, lookup(src))
    info = np.zeros(2, dtype=np.int64)
    if res is None:  # not resident where the node can read it: copy the columns others reduce
        if c0 > 0:
            kernel.copy(own[:c0], src[:c0])
        if c1 < n:
            kernel.copy(own[c1:], src[c1:])
    else:
        info[:] = res[0].uid, res[1]
        res[0].sync()
    work.sync()
    gathered = np.empty((s, 2), dtype=np.int64)
    node.Allgather(info, gathered)  # A: every local input is readable (resident, or copied into the window)
    work.sync()
    if c1 > c0:
        ins = [src[c0:c1] if q == l else _input(node, gathered[q], q, work, c0, c1, dt) for q in range(s)]
        buf = own[c0:c1]
        reduce_column(ins, buf, [], op, kernel, None)
        _cross(h, buf, op, kernel, div)
    fence((work,))
    node.Barrier()  # B: every slice is final in its owner's segment; peers are done reading my input
    work.sync()
    for k in range(K):
        if sb[k + 1] > sb[k]:
            kernel.copy(dst[sb[k]:sb[k + 1]], work.view(k, sb[k] * isz, sb[k + 1] - sb[k], dt))


def _usable(node, hit):
    """``(window, offset)`` if ``hit`` is in a window every rank of ``node`` has mapped, else None."""
    if hit is None:
        return None
    from . import topology

    return hit if topology.state(node).window_ranks(hit[0]) is not None else None


def _input(node, info, q, work, c0, c1, dt):
    """Local rank ``q``'s input elements ``[c0, c1)``: in its resident window, or in its scratch segment."""
    if info[0] == 0:
        return work.view(q, c0 * dt.itemsize, c1 - c0, dt)
    from . import topology
    from .window import by_uid

    w = by_uid(int(info[0]))  # q checked that every node rank maps this window
    return w.view(topology.state(node).window_ranks(w)[q], int(info[1]) + c0 * dt.itemsize, c1 - c0, dt)


def _cross(h, buf, op, kernel, div) -> None:
    """Allreduce ``buf`` (this rank's slice) in place among the ranks of equal local rank on every node."""
    if h.cross is None or buf.size == 0:
        return
    fn = _cross_algorithm(buf.nbytes, h.cross.Get_size(), buf.dtype, op)
    fn(h.cross, buf, buf, op, kernel, div)
