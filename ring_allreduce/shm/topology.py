"""Per-communicator node topology and cached resources (sub-communicators, scratch windows).

Everything derived from a communicator is cached on it as an MPI attribute, so it is found again in O(1), never
outlives it (the attribute's delete callback frees it when the communicator is freed) and is never shared with
another communicator. :func:`release` frees it earlier (collective over the communicator).

Nodes are ``Split_type(COMM_TYPE_SHARED)``. ``RING_ALLREDUCE_PRETEND_NODES`` (``"2x2"``: 2 nodes of 2 ranks;
``"3,2"`` or ``"3+2"``: uneven) or a ``layout`` argument further splits consecutive ranks into pretend nodes, so
the inter-node step of the hierarchical algorithm runs on one machine. A pretend node never spans real nodes.
"""
from __future__ import annotations

import os
import re
import threading

from ..errors import ArgumentError

ENV_PRETEND = "RING_ALLREDUCE_PRETEND_NODES"

_keyval = None
_lock = threading.Lock()


def parse_layout(spec, size: int):
    """Return node sizes (a tuple summing to ``size``) for ``"AxB"``, ``"a,b,..."``/``"a+b+..."`` or a sequence."""
    if spec is None:
        return None
    if isinstance(spec, str):
        s = spec.strip().lower()
        if not s:
            return None
        m = re.fullmatch(r"(\d+)\s*x\s*(\d+)", s)
        if m:
            sizes = (int(m.group(2)),) * int(m.group(1))
        elif re.fullmatch(r"\d+(\s*[,+]\s*\d+)*", s):
            sizes = tuple(int(v) for v in re.split(r"[,+]", s))
        else:
            raise ArgumentError(f"cannot parse node layout {spec!r}; use e.g. '2x2' (2 nodes of 2) or '3,2'")
    else:
        sizes = tuple(int(v) for v in spec)
    if not sizes or any(v < 1 for v in sizes) or sum(sizes) != size:
        raise ArgumentError(f"node layout {spec!r} gives sizes {sizes}, which must be >= 1 and sum to the "
                            f"communicator size {size}")
    return sizes


_parsed: dict = {}  # (spec, size) -> layout or None: route() runs on every auto call, keep it cheap
_ENV_DATA = getattr(os.environ, "_data", None)  # os.environ.get encodes/decodes on every call (~0.3 us)
_ENV_KEY = os.environ.encodekey(ENV_PRETEND) if hasattr(os.environ, "encodekey") else None


def _pretend_spec():
    if _ENV_DATA is not None and _ENV_KEY is not None:
        v = _ENV_DATA.get(_ENV_KEY)
        return v.decode() if isinstance(v, bytes) else v
    return os.environ.get(ENV_PRETEND)


def env_layout(size: int):
    """The pretend layout from ``$RING_ALLREDUCE_PRETEND_NODES`` for a communicator of ``size`` ranks, or None.

    A layout whose sizes do not sum to ``size`` (e.g. set for ``COMM_WORLD`` while a sub-communicator is used)
    does not apply to that communicator: the real nodes are used. A malformed value is an error.
    """
    spec = _pretend_spec()
    if not spec:
        return None
    key = (spec, size)
    if key not in _parsed:
        try:
            _parsed[key] = parse_layout(spec, size)
        except ArgumentError:
            if not re.fullmatch(r"\s*\d+\s*x\s*\d+\s*|\s*\d+(\s*[,+]\s*\d+)*\s*", spec.lower()):
                raise
            _parsed[key] = None
    return _parsed[key]


class Hier:
    """Sub-communicators of one node layout: this rank's node, and the ranks of equal local rank across nodes."""

    __slots__ = ("node", "cross", "n_nodes", "node_index", "node_sizes", "slices", "scratch", "calls")

    def free(self) -> None:
        for w in self.scratch:
            if w is not None:
                w.free()
        self.scratch = [None, None]
        for c in (self.cross, self.node):
            if c is not None:
                c.Free()
        self.cross = self.node = None


class CommState:
    """Resources cached for one communicator."""

    __slots__ = ("comm", "_node", "sizes", "scratch", "rounds", "hier", "groups", "lock")

    def __init__(self, comm):
        self.comm = comm
        self._node = None
        self.sizes = None    # ranks per real node, once known
        self.scratch = None  # copy-in window of the flat shared-memory path
        self.rounds = 0      # copy-in rounds so far: their parity picks the region (same on every rank)
        self.hier = {}       # layout -> Hier
        self.groups = {}     # window uid -> window rank of each comm rank (None: not usable with this comm)
        self.lock = threading.Lock()

    @property
    def node(self):
        """This rank's real node: ``Split_type(COMM_TYPE_SHARED)`` (collective on first use)."""
        if self._node is None:
            from mpi4py import MPI

            self._node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.comm.Get_rank())
        return self._node

    def n_real_nodes(self) -> int:
        """Number of real nodes spanned (collective on first use)."""
        if self.sizes is None:
            leaders = self.comm.allgather(self._leader())
            self.sizes = tuple(leaders.count(v) for v in sorted(set(leaders)))
        return len(self.sizes)

    def _leader(self) -> int:
        from mpi4py import MPI

        return MPI.Group.Translate_ranks(self.node.Get_group(), [0], self.comm.Get_group())[0]

    def window_ranks(self, window):
        """Window rank of every comm rank if all ranks of ``comm`` are in ``window``, else None (cached)."""
        got = self.groups.get(window.uid, False)
        if got is not False:
            return got
        from mpi4py import MPI

        wg, cg = window.win.Get_group(), self.comm.Get_group()
        try:
            ranks = MPI.Group.Translate_ranks(cg, list(range(self.comm.Get_size())), wg)
        finally:
            wg.Free()
            cg.Free()
        res = None if any(r == MPI.UNDEFINED for r in ranks) else tuple(ranks)
        if len(self.groups) > 256:  # entries of freed windows: drop them all now and then
            self.groups = {}
        self.groups[window.uid] = res
        return res

    def hierarchy(self, layout) -> Hier:
        """The node/cross communicators for ``layout`` (node sizes or None for real nodes), built once."""
        h = self.hier.get(layout)
        if h is None:
            h = self.hier[layout] = self._build(layout)
        return h

    def _build(self, layout) -> Hier:
        from mpi4py import MPI

        comm, rank = self.comm, self.comm.Get_rank()
        pretend = 0
        if layout is not None:
            edge = 0
            for i, s in enumerate(layout):
                edge += s
                if rank < edge:
                    pretend = i
                    break
        color = self._leader() * (len(layout) if layout else 1) + pretend
        colors = comm.allgather(color)
        order = sorted(set(colors), key=colors.index)  # nodes numbered by their lowest comm rank
        h = Hier()
        h.node = comm.Split(color, key=rank)
        h.n_nodes = len(order)
        h.node_index = order.index(color)
        h.node_sizes = tuple(colors.count(c) for c in order)
        h.slices = min(h.node_sizes)  # local ranks 0..slices-1 each own one slice across nodes
        local = h.node.Get_rank()
        if h.n_nodes > 1:
            h.cross = comm.Split(local if local < h.slices else MPI.UNDEFINED, key=h.node_index)
            if h.cross == MPI.COMM_NULL:
                h.cross = None
        else:
            h.cross = None
        h.scratch = [None, None]
        h.calls = 0
        return h

    def free(self) -> None:
        for h in self.hier.values():
            h.free()
        self.hier = {}
        if self.scratch is not None:
            self.scratch.free()
            self.scratch = None
        if self._node is not None:
            self._node.Free()
            self._node = None
        self.groups = {}


def make_keyval(free) -> int:
    """An MPI attribute key whose delete callback calls ``free(value)`` when the communicator is freed
    (errors swallowed: nothing may raise out of ``MPI_Comm_free``)."""
    from mpi4py import MPI

    def delete(comm, keyval, value) -> None:
        try:
            free(value)
        except Exception:  # noqa: BLE001
            pass

    return MPI.Comm.Create_keyval(delete_fn=delete)


def _key() -> int:
    global _keyval
    if _keyval is None:
        _keyval = make_keyval(lambda st: st.free())
    return _keyval


def state(comm) -> CommState:
    """Return the cached :class:`CommState` of ``comm`` (created empty on first use; local, no communication)."""
    key = _key()
    st = comm.Get_attr(key)
    if st is None:
        with _lock:
            st = comm.Get_attr(key)
            if st is None:
                st = CommState(comm)
                comm.Set_attr(key, st)
    return st


def cached(comm):
    """The cached state of ``comm`` or None, without creating one."""
    return None if _keyval is None else comm.Get_attr(_keyval)


def release(comm) -> None:
    """Free the windows and sub-communicators cached for ``comm`` now (collective over ``comm``)."""
    if _keyval is None:
        return
    st = comm.Get_attr(_keyval)
    if st is not None:
        comm.Delete_attr(_keyval)  # runs _delete -> st.free()


_launcher_local = []  # ranks on this node according to the launcher's environment (read once)


def known_node_sizes(comm):
    """Ranks per node if known without communicating (pretend layout, cached, launcher hint), else None."""
    p = comm.Get_size()
    layout = env_layout(p)
    if layout is not None:
        return layout
    st = cached(comm)
    if st is not None and st.sizes is not None:
        return st.sizes
    if not _launcher_local:
        local = os.environ.get("MPI_LOCALNRANKS") or os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE") or ""
        _launcher_local.append(int(local) if local.isdigit() else 0)
    local = _launcher_local[0]
    if local > 0:
        from mpi4py import MPI

        world = MPI.COMM_WORLD
        if local == world.Get_size():
            return (p,)  # the whole job runs on this node, so does every communicator
        if local < p and MPI.Comm.Compare(comm, world) == MPI.IDENT:
            return (local, p - local)  # a hint: more than one node, ``local`` ranks on this one
    return None


def node_count(comm, layout=None) -> int:
    """Number of (real or pretend) nodes ``comm`` spans; collective the first time for a communicator."""
    if comm.Get_size() == 1:
        return 1
    layout = layout if layout is not None else env_layout(comm.Get_size())
    st = state(comm)
    if layout is not None:
        return st.hierarchy(layout).n_nodes
    return st.n_real_nodes()
