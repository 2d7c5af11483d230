"""One transport per communicator: a duplicate of it, the settings every rank agreed on, tags and byte counters.

:func:`of` returns the :class:`Transport` cached on a communicator (an MPI attribute, freed with it). Creating it
is collective (``Dup`` plus one ``allgather`` of the settings that shape messages: segment and round sizes, the
shared-memory thresholds, the pretend node layout, the ``auto`` table's digest, ``$RING_ALLREDUCE_CHECK``,
``$RING_ALLREDUCE_KERNEL``); a setting that differs between ranks, or that a rank cannot read, makes every rank
raise the same error before any data moves. Every entry point (``allreduce``, plans, the trainer's buckets,
compression) acquires the transport first, so it is created at the same call on every rank.

Algorithms talk to :attr:`Transport.comm` (the duplicate: its own matching space, so a user's messages on the
same communicator never meet ours), or, for device buffers, to :attr:`Transport.wire`, a :class:`Wire` proxy that
synchronizes the device stream before a device buffer is handed to MPI (the rule: MPI never reads a buffer a
kernel may still be writing) and counts bytes and messages. A caller that wants its own counters (the trainer,
compression) passes its own ``Wire`` over the transport as ``comm``; plans and one-shot calls send through it.
"""
from __future__ import annotations

import os
import threading
import weakref
import zlib

from numpy import ndarray as _ndarray

from . import _registry
from .errors import ArgumentError

_keyval = None
_lock = threading.Lock()
_live: "weakref.WeakSet" = weakref.WeakSet()  # every transport, so a registry change reaches their caches


def _drop_caches() -> None:
    for t in list(_live):
        t.plans = {}


_registry.on_change.append(_drop_caches)

#: the first tag of plans' private tag ranges (below: the algorithms' one-shot tags, compression's)
_PLAN_TAG0 = 0x6000


def buffer_nbytes(spec) -> int:
    """Bytes described by an mpi4py buffer spec: ``buf``, ``[buf, type]``, ``[buf, count, type]``, ..."""
    if type(spec) is _ndarray:
        return spec.nbytes
    from mpi4py import MPI

    if spec is None or spec is MPI.IN_PLACE or spec is MPI.BOTTOM:
        return 0
    if isinstance(spec, (list, tuple)):
        buf = spec[0]
        if len(spec) >= 3 and isinstance(spec[1], int) and isinstance(spec[-1], MPI.Datatype):
            return int(spec[1]) * spec[-1].Get_size()
        if len(spec) >= 3 and isinstance(spec[1], (list, tuple)) and isinstance(spec[-1], MPI.Datatype):
            return int(spec[1][0]) * spec[-1].Get_size()  # (count, displacement)
        return _nbytes(buf)
    return _nbytes(spec)


def _nbytes(buf) -> int:
    n = getattr(buf, "nbytes", None)
    if n is not None:
        return int(n)
    return memoryview(buf).nbytes


def _device_of(spec):
    """The device backend of the array in a buffer spec, or None for host memory."""
    buf = spec[0] if type(spec) is list or type(spec) is tuple else spec
    if type(buf) is _ndarray or buf is None or isinstance(buf, _ndarray):
        return None
    mod = type(buf).__module__ or ""
    if mod.startswith("mpi4py"):  # IN_PLACE, BOTTOM, buffers
        return None
    from . import backends

    try:
        b = backends.array_backend(buf)
    except TypeError:
        return None
    return None if b == backends.NUMPY else b


def _ready(spec) -> None:
    """Synchronize the stream of a device buffer before MPI touches it (host buffers: nothing to do)."""
    if type(spec) is _ndarray:
        return
    dev = _device_of(spec)
    if dev is not None:
        from . import backends

        backends.synchronize(dev)


class Wire:
    """Forward to ``comm``; count what this rank sends, and synchronize device buffers before MPI reads them.

    ``bytes_sent``/``messages``: point-to-point payload handed to ``Send``/``Isend``/``Sendrecv`` (exact bytes,
    no envelope); ``collective_bytes``: the local send buffer of each MPI collective called through it (what
    MPI puts on the wire inside a collective is not visible from Python). Counts run since the last ``reset()``.
    """

    def __init__(self, comm, transport=None):
        self.comm = comm
        self.transport = transport
        self.sums = {}  # hooks.reduce_sum's resolved calls through this wire
        self.bytes_sent = 0
        self.messages = 0
        self.collective_bytes = 0

    def reset(self) -> None:
        self.bytes_sent = self.messages = self.collective_bytes = 0

    def __getattr__(self, name):
        return getattr(self.comm, name)

    def _count(self, spec) -> None:
        _ready(spec)
        self.bytes_sent += buffer_nbytes(spec)
        self.messages += 1

    def Send(self, buf, dest, tag=0):
        self._count(buf)
        return self.comm.Send(buf, dest, tag)

    def Ssend(self, buf, dest, tag=0):
        self._count(buf)
        return self.comm.Ssend(buf, dest, tag)

    def Isend(self, buf, dest, tag=0):
        self._count(buf)
        return self.comm.Isend(buf, dest, tag)

    # a receive into a device buffer that a queued kernel still reads (or writes) is the same hazard as a send
    def Irecv(self, buf, source=-1, tag=-1):
        _ready(buf)
        return self.comm.Irecv(buf, source, tag)

    def Recv(self, buf, source=-1, tag=-1, status=None):
        _ready(buf)
        return self.comm.Recv(buf, source, tag, status)

    def Sendrecv(self, sendbuf, dest, sendtag=0, recvbuf=None, source=-1, recvtag=-1, status=None):
        from mpi4py import MPI

        _ready(recvbuf)
        if dest != MPI.PROC_NULL:
            self._count(sendbuf)
        return self.comm.Sendrecv(sendbuf, dest, sendtag, recvbuf, source, recvtag, status)

    def Sendrecv_replace(self, buf, dest, sendtag=0, source=-1, recvtag=-1, status=None):
        from mpi4py import MPI

        if dest != MPI.PROC_NULL:
            self._count(buf)
        return self.comm.Sendrecv_replace(buf, dest, sendtag, source, recvtag, status)

    def _coll(self, name, sendbuf, *args, **kw):
        _ready(sendbuf)
        if args:
            _ready(args[0])
        self.collective_bytes += buffer_nbytes(sendbuf)
        return getattr(self.comm, name)(sendbuf, *args, **kw)

    def Allreduce(self, sendbuf, recvbuf, op=None):
        _ready(sendbuf)
        _ready(recvbuf)
        self.collective_bytes += buffer_nbytes(sendbuf)
        if op is None:
            from mpi4py import MPI

            op = MPI.SUM
        return self.comm.Allreduce(sendbuf, recvbuf, op)

    def Iallreduce(self, sendbuf, recvbuf, op=None):
        from mpi4py import MPI

        return self._coll("Iallreduce", sendbuf, recvbuf, MPI.SUM if op is None else op)

    def Allgather(self, sendbuf, recvbuf):
        return self._coll("Allgather", sendbuf, recvbuf)

    def Bcast(self, buf, root=0):
        if self.comm.Get_rank() == root:
            self.collective_bytes += buffer_nbytes(buf)
        return self.comm.Bcast(buf, root)


def env_check() -> bool:
    """``$RING_ALLREDUCE_CHECK`` (default on)."""
    return os.environ.get("RING_ALLREDUCE_CHECK", "1").lower() not in ("0", "false", "no", "off")


#: (name, module attribute, smallest accepted, largest accepted): settings that shape messages
_SIZES = (
    ("RING_ALLREDUCE_SEGMENT_BYTES", "algorithms.ring:SEGMENT_BYTES", 8, 1 << 34),
    ("RING_ALLREDUCE_SHM_SEGMENT_BYTES", "shm.settings:SEGMENT_BYTES", 1024, 1 << 34),
    ("RING_ALLREDUCE_SHM_ROUND_BYTES", "shm.settings:ROUND_BYTES", 64, 1 << 34),
    ("RING_ALLREDUCE_SHM_RESIDENT_BYTES", "shm.settings:RESIDENT_MIN_BYTES", 0, 1 << 62),
    ("RING_ALLREDUCE_SHM_COPY_IN_BYTES", "shm.settings:COPY_IN_MIN_BYTES", -1, 1 << 62),
    ("RING_ALLREDUCE_HIERARCHICAL_BYTES", "shm.settings:HIERARCHICAL_MIN_BYTES", 0, 1 << 62),
)
#: the smallest round that the copy-in path accepts from the environment: smaller ones never finish a large call
MIN_ENV_ROUND_BYTES = 4096


def _module_value(path: str):
    import importlib

    mod, attr = path.split(":")
    return getattr(importlib.import_module(f"ring_allreduce.{mod}"), attr)


def local_settings(size: int):
    """This rank's view of every setting that shapes messages, and the problems found in it (a list of strings)."""
    from .settings import env_errors

    settings, problems = {}, list(env_errors())
    for env, path, lo, hi in _SIZES:
        v = _module_value(path)
        settings[env] = v
        if not isinstance(v, int) or not lo <= v <= hi:
            problems.append(f"{env}={v!r} is out of range [{lo}, {hi}]")
    raw_round = os.environ.get("RING_ALLREDUCE_SHM_ROUND_BYTES")
    if raw_round is not None and raw_round.strip().lstrip("-").isdigit() and int(raw_round) < MIN_ENV_ROUND_BYTES:
        problems.append(f"RING_ALLREDUCE_SHM_ROUND_BYTES={raw_round} is below {MIN_ENV_ROUND_BYTES}: "
                        "a large call would take millions of rounds")
    settings["RING_ALLREDUCE_CHECK"] = env_check()
    settings["RING_ALLREDUCE_KERNEL"] = os.environ.get("RING_ALLREDUCE_KERNEL") or None
    from .shm import topology

    try:
        settings["RING_ALLREDUCE_PRETEND_NODES"] = topology.env_layout(size)
    except ArgumentError as e:
        settings["RING_ALLREDUCE_PRETEND_NODES"] = os.environ.get(topology.ENV_PRETEND)
        problems.append(f"RING_ALLREDUCE_PRETEND_NODES: {e}")
    settings["auto table"] = table_digest()
    if settings["auto table"] is None:
        problems.append(f"auto table: {_table_error()}")
    return settings, problems


def settings_digest(size: int):
    """``(digest, settings, problems)`` of :func:`local_settings`: what a plan adds to its agreed signature, so a
    setting changed after the transport was created is still caught."""
    settings, problems = local_settings(size)
    return zlib.crc32(repr(sorted(settings.items())).encode()) & 0x7FFFFFFF, settings, problems


_table_errors: list = []


def table_digest():
    """A digest of the ``auto`` table in use (None when it cannot be loaded; :func:`_table_error` says why)."""
    from .algorithms import auto

    try:
        return auto.digest()
    except (OSError, ValueError, TypeError, AttributeError) as e:  # missing file, bad JSON, bad rules
        _table_errors[:] = [f"{type(e).__name__}: {e}"]
        return None


def _table_error() -> str:
    return _table_errors[0] if _table_errors else "cannot be loaded"


def agree_settings(comm, settings: dict, problems: list) -> None:
    """Raise the same error on every rank unless all ranks read the same settings without problems."""
    from .agreement import raise_differences

    raise_differences(comm.allgather((settings, problems)), list(settings),
                      "settings (environment variables, auto table)")


class Transport:
    """A communicator's duplicate, the agreed settings, tag allocation and byte counters (see the module doc)."""

    __slots__ = ("user", "comm", "wire", "settings", "check", "size", "rank", "plans", "_tags", "__weakref__")

    def __init__(self, user, dup, settings: dict):
        self.user, self.comm = user, dup
        self.wire = Wire(dup, self)  # device buffers go through it (stream synchronized before MPI reads them)
        self.settings = settings
        self.check = bool(settings["RING_ALLREDUCE_CHECK"])
        self.size, self.rank = dup.Get_size(), dup.Get_rank()
        self.plans = {}  # one-shot plan cache: (count, dtype, op, algorithm, kernel, out kind) -> _Schedule
        self._tags = _PLAN_TAG0
        _live.add(self)

    def new_tags(self, n: int = 2) -> int:
        """Reserve ``n`` tags for one plan (plans are created in the same order on every rank, so tags match)."""
        t = self._tags
        self._tags += n
        if self._tags > 0x7FFF:  # MPI guarantees tags up to 32767
            self._tags = _PLAN_TAG0
        return t

    def free(self) -> None:
        self.plans = {}
        if self.comm is not None:
            try:
                self.comm.Free()
            except Exception:  # MPI already finalized
                pass
            self.comm = None


def _key() -> int:
    global _keyval
    if _keyval is None:
        with _lock:
            if _keyval is None:
                from .shm.topology import make_keyval

                _keyval = make_keyval(lambda t: t.free())
    return _keyval


def unwrap(comm):
    """The transport (if a wire knows it) or the mpi4py communicator under proxies that keep it as ``.comm``."""
    while True:
        if isinstance(comm, Wire) and comm.transport is not None:
            return comm.transport
        inner = None if _is_mpi_comm(comm) else getattr(comm, "comm", None)
        if inner is None:
            return comm
        comm = inner


def _is_mpi_comm(comm) -> bool:
    from mpi4py import MPI

    return isinstance(comm, MPI.Comm)


def of(comm) -> Transport:
    """The transport of ``comm`` (an mpi4py intracommunicator, a :class:`Wire` or another proxy of one);
    collective when first created."""
    comm = unwrap(comm)
    if isinstance(comm, Transport):
        return comm
    key = _keyval if _keyval is not None else _key()
    t = comm.Get_attr(key)
    if t is not None:
        return t
    settings, problems = local_settings(comm.Get_size())
    agree_settings(comm, settings, problems)
    dup = comm.Dup()
    t = Transport(comm, dup, settings)
    comm.Set_attr(key, t)
    return t


def cached(comm):
    """The transport of ``comm`` if it exists, else None (no communication)."""
    comm = unwrap(comm)
    if isinstance(comm, Transport):
        return comm
    return None if _keyval is None else comm.Get_attr(_keyval)


def release(comm) -> None:
    """Free the transport of ``comm`` (its duplicate communicator); the next call creates a new one (collective)."""
    if _keyval is not None and comm.Get_attr(_keyval) is not None:
        comm.Delete_attr(_keyval)
