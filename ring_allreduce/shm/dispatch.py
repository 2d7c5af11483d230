"""The one way into the node-aware paths: algorithms ``"shm"`` and ``"hierarchical"``, and ``auto``'s routing.

Both registry entries come here; the dispatcher decides from facts every rank shares (the backend, the node
layout after ``Split_type``/the pretend layout), never from rank-local ones: device buffers go to the ring (no
host shared memory to use), a communicator on one node to :func:`.flat.node_local`, one spanning nodes to
:func:`.hierarchical.across_nodes`. ``shm`` on a multi-node communicator is ``hierarchical`` on the real nodes;
``hierarchical`` on one node is ``shm``. :func:`route` is what ``auto`` asks first (its answer is rank-local and
is agreed across ranks by the plan before use).
"""
from __future__ import annotations

import os

import numpy as np

from . import settings


def _ring(comm, src, dst, op, kernel, div):
    from ..algorithms.ring import ring

    return ring(comm, src, dst, op, kernel, div)


def shm(comm, src, dst, op, kernel, div=None):
    """Allreduce through the node's shared memory (a communicator spanning real nodes: across them too)."""
    from . import topology
    from .flat import node_local

    if kernel.backend != "numpy":  # device buffers (CUDA-aware MPI): no host shared memory to use
        return _ring(comm, src, dst, op, kernel, div)
    st = topology.state(comm)
    if st.node.Get_size() != comm.Get_size():  # same answer on every rank: some node lacks some rank of comm
        return hierarchical(comm, src, dst, op, kernel, div)
    return node_local(comm, st, src, dst, op, kernel, div)


def hierarchical(comm, src, dst, op, kernel, div=None, layout=None):
    """Shared memory inside each (real or pretend) node, messages between nodes (see :mod:`.hierarchical`)."""
    from . import topology
    from .flat import node_local
    from .hierarchical import across_nodes

    if kernel.backend != "numpy":
        return _ring(comm, src, dst, op, kernel, div)
    p = comm.Get_size()
    layout = topology.parse_layout(layout, p) if layout is not None else topology.env_layout(p)
    h = topology.state(comm).hierarchy(layout)
    if h.n_nodes == 1:
        return node_local(h.node, topology.state(h.node), src, dst, op, kernel, div)
    return across_nodes(h, src, dst, op, kernel, div)


def route(x, out, comm):
    """Return ``"shm"``/``"hierarchical"`` where ``auto`` should use the node-aware paths for this call, else None.

    Never communicates (it runs before the cross-rank agreement check, which must be the first collective).
    Messages under the smallest threshold return None at once. More than one node with some node holding
    several ranks -> ``"hierarchical"`` from :data:`settings.HIERARCHICAL_MIN_BYTES` up; the node count comes from the
    pretend layout, else from what is cached for ``comm`` (known after ``ring_allreduce.shm.node_count(comm)``,
    a ``shared_empty`` on ``comm`` or a shared-memory call on it), else from the launcher's local-size variables
    for ``COMM_WORLD``. One node: resident NumPy arrays (whatever ``out`` is) from :data:`settings.RESIDENT_MIN_BYTES` up
    -> ``"shm"``; ordinary ones from :data:`settings.COPY_IN_MIN_BYTES` up when the node is known to be one node and not
    oversubscribed (p <= CPUs).
    """
    if not isinstance(x, np.ndarray):
        return None
    nbytes = x.nbytes
    if nbytes < settings._ROUTE_MIN_BYTES or comm.Get_size() == 1:  # the small-message fast exit: no env or attr lookups
        return None
    from . import topology
    from .window import lookup

    p = comm.Get_size()
    sizes = topology.known_node_sizes(comm)
    if sizes is not None and len(sizes) > 1:
        # one rank per node: nothing to share, the flat algorithms are the hierarchy
        if max(sizes) == 1 or nbytes < settings.HIERARCHICAL_MIN_BYTES:
            return None
        return "hierarchical"
    if nbytes >= settings.RESIDENT_MIN_BYTES and lookup(x) is not None:
        return "shm"
    if 0 <= settings.COPY_IN_MIN_BYTES <= nbytes and p <= (os.cpu_count() or 1) and sizes is not None:
        return "shm"
    return None
