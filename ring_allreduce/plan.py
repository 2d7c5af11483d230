"""Allreduce plans: validate, agree and allocate once, then run many times (MPI-4 persistent collectives).

A :class:`Schedule` is what local validation resolves for a call (backend, kernel, op, algorithm after ``auto``,
the signature words ranks compare) and is cached per transport for the one-shot :func:`ring_allreduce.allreduce`.
A :class:`Plan` binds a schedule to fixed buffers after one collective agreement (``allreduce_init``); ``plan()``
then only moves data, and ``start()``/``test()``/``wait()`` run the same step sequence nonblocking.

Agreed across ranks (every rank raises the same error otherwise, before any data message): count, dtype, op, the
requested algorithm and what ``auto`` resolved it to, the kernel, the ``auto`` table's digest, and whether each
rank's arguments were valid at all (read-only ``out``, non-contiguous arrays, ...); the environment settings that
shape messages are agreed when the communicator's transport is created (:mod:`ring_allreduce.transport`).
The node-aware route of ``auto`` (shared memory, hierarchical) depends on where each rank's array lives; it is
agreed too: when ranks see different routes they all take the flat algorithm.
"""
from __future__ import annotations

import zlib

import numpy as np

from . import agreement, algorithms, backends, kernels
from . import transport as _transport
from .algorithms import auto
from .algorithms._common import _MPI, mpi
from .errors import ArgumentError
from .ops import check_dtype, dtype_code, normalize_op, op_code

#: route codes (agreed like the other fields, but ranks may differ: then everyone takes the flat algorithm)
FLAT, SHM, HIERARCHICAL = 0, 1, 2
_ROUTES = {None: FLAT, "shm": SHM, "hierarchical": HIERARCHICAL}
_ROUTE_NAMES = {SHM: "shm", HIERARCHICAL: "hierarchical"}
#: algorithms that keep their resources cached on the user's communicator (node and cross communicators,
#: windows freed by ``ring_allreduce.shm.release``) and only use collectives: they run on it, not on the duplicate
_ON_USER_COMM = ("shm", "hierarchical")


def _flat(a):
    """A 1-D view of a C-contiguous array; NumPy subclasses (``np.matrix``) as plain ndarrays."""
    if isinstance(a, np.ndarray):
        return np.asarray(a).reshape(-1)
    return backends.flat(a)


def _shm_route(x, out, comm):
    from .shm.dispatch import route

    return route(x, out, comm)


def _changed(agreed: dict, now: dict) -> str:
    """The settings that differ from what the transport agreed (readable, for a mismatch message)."""
    diff = [f"{k}={now.get(k)!r}" for k in sorted(now) if now.get(k) != agreed.get(k)]
    return ", ".join(diff) or "as agreed"


class Schedule:
    """One call's local validation: what runs, and the signature words every rank compares."""

    __slots__ = ("backend", "staged", "kernel", "kernel_name", "op", "algorithm", "flat", "fn", "words",
                 "details", "auto", "p", "route_min", "t", "hot", "native", "pair")

    def __init__(self, t, x, op, algorithm, kernel):
        try:
            self.backend = backends.array_backend(x)
        except TypeError as e:
            raise ArgumentError(str(e)) from None
        dt = check_dtype(x.dtype)
        self.t, self.p = t, t.size
        self.op = normalize_op(op)
        if not isinstance(algorithm, str):
            raise ArgumentError(f"algorithm must be a name, got {algorithm!r}")
        self.algorithm, self.auto = algorithm, algorithm == "auto"
        nbytes = int(x.size) * dt.itemsize
        if self.auto:
            try:
                digest = auto.digest()
            except (OSError, ValueError, TypeError, AttributeError) as e:
                raise ArgumentError(f"auto table cannot be used: {type(e).__name__}: {e}") from None
            self.flat = auto.resolve(nbytes, self.p, dt, self.op)
        else:
            digest = 0
            self.flat = algorithm
        self.fn = algorithms.get(self.flat)
        self.staged = self.backend != backends.NUMPY and not backends.cuda_aware_mpi()
        try:
            self.kernel = kernels.for_backend(backends.NUMPY if self.staged else self.backend, kernel)
        except ValueError as e:
            raise ArgumentError(str(e)) from None
        self.kernel_name = self.kernel.name
        from .shm import settings as shm_settings

        # below this size auto never routes to the node-aware paths (no residency lookup, no extra agreement)
        self.route_min = shm_settings._ROUTE_MIN_BYTES if self.auto and self.backend == backends.NUMPY else None
        if self.route_min is not None and nbytes < self.route_min:
            self.route_min = None
        sdigest, settings, problems = _transport.settings_digest(self.p)
        if problems:
            raise ArgumentError("invalid settings: " + ", ".join(problems))
        w2 = zlib.crc32(f"{self.flat}|{self.kernel_name}|{digest}|{sdigest}".encode()) & 0x7FFFFFFF
        w1 = (agreement.algorithm_code(algorithm) << 16) | (dtype_code(dt) << 8) | (op_code(self.op) << 1)
        self.words = np.array([int(x.size), w1, w2, 0], dtype=np.int64)
        self.details = {"count": int(x.size), "dtype": str(dt), "op": self.op, "algorithm": algorithm,
                        "resolved": self.flat, "kernel": self.kernel_name, "auto table": digest or None,
                        "call": "allreduce", "settings": _changed(t.settings, settings)}
        self.pair = np.concatenate([self.words, -self.words])  # what the per-call check sends, built once
        #: ``(comm.Allreduce, MPI op, MPI.IN_PLACE)`` when ``hot`` is one native call, else None: mpi4py then refuses
        #: a bad buffer before any message, so the one-shot path with the check off leaves those checks to it
        self.native = None
        self.hot = self._hot(dt)

    def _hot(self, dt):
        """``run(x, out) -> out`` for the one-shot common case (C-contiguous host ndarray, flat route, p > 1,
        not float16 avg), or None: the algorithm call on prebuilt arguments, nothing else."""
        if self.backend != backends.NUMPY or self.route_min is not None or self.p == 1 or \
                (self.op == "avg" and dt == np.float16) or self.flat in _ON_USER_COMM:
            return None
        comm, p = self.t.comm, self.p
        op, div = ("sum", p) if self.op == "avg" else (self.op, None)
        if self.flat == "mpi" and div is None and self.fn is algorithms.get("mpi"):
            from .ops import mpi_op

            allreduce, mop, IN_PLACE = comm.Allreduce, mpi_op(op), (_MPI[0] if _MPI else mpi()).IN_PLACE
            empty_like = np.empty_like
            self.native = (allreduce, mop, IN_PLACE)

            def native(x, out):  # mpi4py takes the arrays as they are (any shape, C-contiguous)
                if out is None:
                    out = empty_like(x)
                    allreduce(x, out, mop)
                else:
                    allreduce(IN_PLACE if out is x else x, out, mop)
                return out
            return native
        fn, kernel = self.fn, self.kernel

        def hand_written(x, out):
            if out is None:
                out = np.empty_like(x)
            if x.size:
                src = x.reshape(-1) if x.ndim != 1 else x
                dst = src if out is x else (out.reshape(-1) if out.ndim != 1 else out)
                fn(comm, src, dst, op, kernel, div)
            return out
        return hand_written

    def route(self, x, out) -> int:
        """This rank's node-aware route for these buffers (rank-local: agree it before use)."""
        if self.route_min is None:
            return FLAT
        return _ROUTES[_shm_route(x, out, self.t.user)]

    def fn_for(self, route: int):
        """(name, fn) of what runs for an agreed route."""
        if route == FLAT:
            return self.flat, self.fn
        name = _ROUTE_NAMES[route]
        return name, algorithms.get(name)


def disjoint(out, x) -> bool:
    """Distinct host arrays ``out`` and ``x`` share no memory (cheap when both own their data)."""
    return (out.base is None and x.base is None) or not np.may_share_memory(out, x)


def validate_buffers(x, out):
    """Raise ArgumentError for arrays no algorithm can use (shape, contiguity, writability, aliasing)."""
    try:
        xb = backends.array_backend(x)
    except TypeError as e:
        raise ArgumentError(str(e)) from None
    if not backends.is_c_contiguous(x):
        raise ArgumentError("x must be C-contiguous (use np.ascontiguousarray or .copy())")
    if out is x:
        if xb == backends.NUMPY and not x.flags.writeable:
            raise ArgumentError("out=x (in place) but x is read-only")
        return
    if out is None:
        return
    try:
        ob = backends.array_backend(out)
    except TypeError as e:
        raise ArgumentError(f"out: {e}") from None
    if ob != xb:
        raise ArgumentError(f"out is a {ob} array but x is a {xb} array")
    if tuple(out.shape) != tuple(x.shape) or out.dtype != x.dtype:
        raise ArgumentError(f"out has shape {tuple(out.shape)} and dtype {out.dtype}; "
                            f"expected {tuple(x.shape)} and {x.dtype}")
    if not backends.is_c_contiguous(out):
        raise ArgumentError("out must be C-contiguous")
    if ob == backends.NUMPY:
        if not out.flags.writeable:
            raise ArgumentError("out is read-only")
        if not disjoint(out, x):
            raise ArgumentError("out overlaps x without being x; pass out=x for in-place")


def check_words(t, words, details, error=None) -> int:
    """One ``MPI.Allreduce`` of ``[words, -words]``: raise the same error everywhere on a difference; return the route.

    Word 3 is the route: ranks may differ there, and then every rank gets :data:`FLAT`.
    """
    MPI = _MPI[0] if _MPI else mpi()
    buf = np.concatenate([words, -words])
    t.comm.Allreduce(MPI.IN_PLACE, buf, MPI.MAX)
    b = buf.tolist()
    if b[1] & 1 or b[0] != -b[4] or b[1] != -b[5] or b[2] != -b[6]:
        agreement.explain(t.comm, details, error)
    return b[3] if b[3] == -b[7] else FLAT


def reduce_flat(t, s, name, fn, src, dst, via=None) -> None:
    """Blocking run of ``fn`` on flat views (``dst is src`` in place) on the right communicator (see module doc)."""
    if src.size == 0:
        return
    p = t.size
    if p == 1:
        if dst is not src:
            s.kernel.copy(dst, src)
        return
    op, src, div = prepare(s.op, src, dst, p, s.kernel)
    fn(comm_for(t, s, name, via), src, dst, op, s.kernel, div)


def comm_for(t, s, name, via=None):
    """The user's communicator for the node-aware algorithms; else ``via`` (a caller's counting :class:`Wire`), the
    syncing wire for device buffers handed to MPI, or the duplicate."""
    if s.backend != backends.NUMPY and not s.staged:  # device buffers (shm/hierarchical fall back to the ring)
        return via if via is not None else t.wire
    if name in _ON_USER_COMM:
        return t.user
    if via is not None:
        return via
    return t.comm


def prepare(op, src, dst, p, kernel):
    """``(op, src, div)`` for the algorithms: ``avg`` is a sum then a division, float16 divided first."""
    if op != "avg":
        return op, src, None
    if src.dtype == np.float16 and p > 1:
        # divide first so the fp16 sum cannot overflow where the inputs do not
        kernel.scale(src, dst, p)
        return "sum", dst, None
    return "sum", src, p


class Plan:
    """A persistent allreduce on fixed buffers; see :func:`allreduce_init`.

    ``plan()`` runs it and returns ``out``; ``start()`` begins a nonblocking run that ``test()`` (True when done)
    and ``wait()`` (returns ``out``) progress; ``free()`` (or leaving a ``with`` block) releases it. Plans on
    one communicator must be started in the same order on every rank (as MPI's persistent collectives); several
    may be in flight at once (each has its own tags and scratch).
    """

    __slots__ = ("x", "out", "t", "schedule", "name", "fn", "src", "dst", "tag", "pool", "_gen", "_reqs",
                 "_active", "_host", "_run", "_idle", "nbytes", "via")

    def __init__(self, x, comm, op="sum", algorithm="auto", out=None, kernel=None):
        MPI = _MPI[0] if _MPI else mpi()
        if comm is None:
            comm = MPI.COMM_WORLD
        _check_comm(comm)
        t = self.t = _transport.of(comm)
        # a counting proxy (a Wire, or another proxy over one): the algorithms send through it, so it counts
        self.via = None if isinstance(comm, MPI.Comm) else comm
        self._active = False
        self._gen = self._reqs = None
        try:
            validate_buffers(x, out)
            s = Schedule(t, x, op, algorithm, kernel)
            error = None
        except (ArgumentError, TypeError, ValueError) as e:
            s, error = None, e
        route = agree_plan(t, s, error, x, out)
        self.tag = t.new_tags(2)  # after the agreement: every rank gets here, or none does
        self.schedule = s
        self.x = x
        self.out = x if out is x else (out if out is not None else backends.empty_like(x))
        self.name, self.fn = s.fn_for(route)
        self.nbytes = int(x.size) * x.dtype.itemsize
        self.pool = {}
        if s.staged:
            self._host = backends.host_buffer(s.backend, x.shape, x.dtype)  # pinned: kept for the plan's life
            self.src = self.dst = _flat(self._host)
        else:
            self._host = None
            self.src = _flat(x)
            self.dst = self.src if self.out is x else _flat(self.out)
        self._run = self._fast() or self._blocking

    def _fast(self):
        """A closure for the common case (host arrays, p > 1, no staging): only the algorithm call is left."""
        s, t, src, dst, out = self.schedule, self.t, self.src, self.dst, self.out
        if s.backend != backends.NUMPY or t.size == 1 or src.size == 0 or (s.op == "avg" and src.dtype == np.float16):
            return None
        comm = comm_for(t, s, self.name, self.via)
        op, _, div = prepare(s.op, src, dst, t.size, s.kernel)
        if self.name == "mpi" and div is None:  # the native call itself: MPI_Allreduce on prebuilt arguments
            from .ops import mpi_op

            allreduce, send, mop = comm.Allreduce, ((_MPI[0] if _MPI else mpi()).IN_PLACE if src is dst else src), \
                mpi_op(op)

            def run():
                allreduce(send, dst, mop)
                return out
            return run
        fn, kernel = self.fn, s.kernel

        def run():
            fn(comm, src, dst, op, kernel, div)
            return out
        return run

    # -- blocking ---------------------------------------------------------------------------------------------
    def __call__(self):
        """Run the allreduce; returns ``out``."""
        return self._run()

    def _blocking(self):
        s = self.schedule
        if self._host is not None:
            backends.to_host_into(self.x, self._host)  # waits for the stream that wrote x
        reduce_flat(self.t, s, self.name, self.fn, self.src, self.dst, self.via)
        if self._host is not None:
            backends.from_host(self._host, self.out)
        elif s.backend != backends.NUMPY:
            s.kernel.synchronize()
        return self.out

    # -- nonblocking ------------------------------------------------------------------------------------------
    def _steps(self):
        s, t = self.schedule, self.t
        if self._host is not None:
            backends.to_host_into(self.x, self._host)
        src, dst = self.src, self.dst
        steps = getattr(self.fn, "steps", None)
        if src.size and t.size > 1 and steps is not None:
            op, src2, div = prepare(s.op, src, dst, t.size, s.kernel)
            yield from steps(comm_for(t, s, self.name, self.via), src2, dst, op, s.kernel, div, tag=self.tag,
                             pool=self.pool)
        else:  # no step form (shm, hierarchical, user algorithms): it runs inside the first test()/wait()
            if src.size and t.size > 1:
                yield []
            reduce_flat(t, s, self.name, self.fn, src, dst, self.via)
        if self._host is not None:
            backends.from_host(self._host, self.out)
        elif s.backend != backends.NUMPY:
            s.kernel.synchronize()

    def start(self):
        """Begin a nonblocking run (returns the plan, which ``test()``/``wait()`` progress)."""
        if self._active:
            raise RuntimeError("plan is already active; wait() for it before starting it again")
        if self._run is _freed:
            _freed()
        self._active = True
        self._idle, self._run = self._run, _busy
        self._gen = self._steps()
        self._reqs = next(self._gen, None)
        if self._reqs is None:
            self._finish()
        return self

    def _finish(self):
        self._active = False
        self._gen = self._reqs = None
        self._run = self._idle

    def test(self) -> bool:
        """Progress the active run without blocking on messages; True once it is complete (or was never started)."""
        if not self._active:
            return True
        testall = (_MPI[0] if _MPI else mpi()).Request.Testall
        gen = self._gen
        while self._reqs is not None:
            if not testall(self._reqs):
                return False
            self._reqs = next(gen, None)
        self._finish()
        return True

    progress = test

    def wait(self):
        """Complete the active run; returns ``out``."""
        if self._active:
            waitall = (_MPI[0] if _MPI else mpi()).Request.Waitall
            gen = self._gen
            while self._reqs is not None:
                waitall(self._reqs)
                self._reqs = next(gen, None)
            self._finish()
        return self.out

    def free(self) -> None:
        """Release the plan (an active run is completed first)."""
        self.wait()
        self.pool = {}
        if self._host is not None:  # the (pinned) staging buffer goes with the plan
            self._host = self.src = self.dst = None
        self._run = self._idle = _freed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.free()

    def __repr__(self) -> str:
        s = self.schedule
        return (f"Plan({s.details['count']} x {s.details['dtype']}, op={s.op}, algorithm={self.name}"
                f"{' (auto)' if s.auto else ''}, kernel={s.kernel_name}, p={self.t.size})")


def _freed():
    raise RuntimeError("plan has been freed")


def _busy():
    raise RuntimeError("plan is active (started and not yet completed by test()/wait())")


def _check_comm(comm) -> None:
    MPI = _MPI[0] if _MPI else mpi()
    comm = _transport.unwrap(comm)
    if isinstance(comm, _transport.Transport):
        return
    if not isinstance(comm, MPI.Intracomm) or comm.Is_inter():
        raise ArgumentError(f"comm must be an mpi4py intracommunicator, got {type(comm).__name__}")


def agree_plan(t, s, error, x, out) -> int:
    """Collective: raise the same error on every rank unless all schedules agree; return the agreed route."""
    mine_route = FLAT
    if s is not None:
        try:
            mine_route = s.route(x, out)
        except Exception as e:  # a residency lookup that fails must not leave the others waiting
            s, error = None, e
    if s is None:
        words, details = np.array([-1, 1, 0, 0], dtype=np.int64), {}
    else:
        words, details = s.words.copy(), dict(s.details, call="allreduce_init")
        words[2] = zlib.crc32(f"{words[2]}|init".encode()) & 0x7FFFFFFF  # a one-shot call on a peer: mismatch
        words[3] = mine_route
    return check_words(t, words, details, error)
