"""The public entry points: :func:`allreduce`, :func:`allreduce_init` (plans) and :func:`iallreduce`."""
from __future__ import annotations

import numpy as np

from . import backends
from . import transport as _transport
from .errors import ArgumentError
from .plan import FLAT, Plan, Schedule, _check_comm, check_words, disjoint, reduce_flat, validate_buffers

_ndarray = np.ndarray
_MPI: list = []  # mpi4py.MPI once loaded: `from mpi4py import MPI` costs ~0.3 us per call
_KEY: list = []  # the transport attribute's keyval, once created
#: (communicator, transport) of the last direct call; replaced whole, so threads see a pair. Never `comm=None`.
_LAST: tuple = (object(), None)


def _load_mpi():
    from mpi4py import MPI

    _MPI.append(MPI)
    return MPI


def allreduce_init(x, comm=None, *, op="sum", algorithm="auto", out=None, kernel=None) -> Plan:
    """Create a persistent allreduce plan of ``x`` into ``out`` (collective; MPI-4 ``MPI_Allreduce_init``).

    Validates the arguments, agrees them across ranks (every rank raises the same error on any difference or
    local problem), resolves ``auto`` once and allocates scratch. ``plan()`` then runs it (the buffers' current
    contents), ``plan.start()``/``plan.test()``/``plan.wait()`` run it nonblocking, ``plan.free()`` (or a
    ``with`` block) releases it. Arguments as :func:`allreduce`; ``out=None`` allocates the output once.
    """
    return Plan(x, comm, op, algorithm, out, kernel)


def iallreduce(x, comm=None, *, op="sum", algorithm="auto", out=None, kernel=None) -> Plan:
    """Start a nonblocking allreduce (collective) and return its request: ``test()``, ``wait() -> out``.

    A one-use plan (:func:`allreduce_init` then ``start()``): its arguments are agreed across ranks first.
    """
    return Plan(x, comm, op, algorithm, out, kernel).start()


def allreduce(x, comm=None, *, op="sum", algorithm="auto", out=None, check=None, kernel=None):
    """Reduce ``x`` across all ranks of ``comm`` and return the result on every rank.

    Args:
        x: C-contiguous NumPy, CuPy or Numba CUDA array of any shape; float16/32/64 or int32/64.
        comm: an mpi4py intracommunicator; None means ``MPI.COMM_WORLD``.
        op: ``"sum"``, ``"avg"``, ``"prod"``, ``"min"``, ``"max"`` or the matching ``MPI.Op``. Integer ``avg``
            floor-divides the sum; float16 ``avg`` divides each input by p before summing, so it cannot overflow
            where the inputs do not. ``min``/``max``: a NaN gives NaN, ``min(-0.0, 0.0) = -0.0``, ``max = +0.0``.
        algorithm: a registered name (``ring``, ``tree``, ``recursive_doubling``, ``rabenseifner``, ``mpi``, ...)
            or ``"auto"`` (chosen by size, p, dtype and op from the tuning table, and where the arrays live).
        out: optional output array of the same shape, dtype and backend; ``out=x`` reduces in place.
        check: agree the arguments across ranks before sending data (one 64-byte collective); on a difference or
            an invalid argument on some rank every rank raises the same :class:`MismatchError`/:class:`ArgumentError`.
            Default: ``$RING_ALLREDUCE_CHECK`` (on unless ``0``), agreed across ranks. Must be the same on every
            rank when passed. Off, a rank's own invalid argument raises on that rank only.
        kernel: reduction kernel name overriding the backend's default (see :mod:`ring_allreduce.kernels`).

    Each distinct (count, dtype, op, algorithm, kernel) is validated once and cached on the communicator's
    transport; repeated calls run the cached schedule. For a fixed buffer, :func:`allreduce_init` is cheaper.
    """
    global _LAST
    last = _LAST
    if comm is last[0] and type(x) is _ndarray and (check is False or check is None and not last[1].check):
        # The lean path (check off, a cached native schedule): one MPI_Allreduce. mpi4py refuses a read-only,
        # non-contiguous, or other-dtype/size `out` before any message is sent; the full path below then names
        # the problem. Left to check here: what mpi4py accepts but would reduce wrongly (another shape of the
        # same size, Fortran order, overlap). A freed transport has an empty cache.
        try:
            n = last[1].plans[x.size, x.dtype, op, algorithm, kernel].native  # a registry change empties the cache
        except (KeyError, TypeError):  # not cached, or an unhashable op/kernel
            n = None
        one = x.ndim == 1  # 1-D and 1-D: mpi4py's contiguity and count tests make C order and the same shape
        if (n is not None and (one or x.flags.c_contiguous)
                and (out is None or out is x
                     or (type(out) is _ndarray and (out.ndim == 1 if one else out.shape == x.shape
                                                    and out.flags.c_contiguous)
                         and (out.base is None and x.base is None or not np.may_share_memory(out, x))))):
            try:
                if out is None:
                    r = np.empty_like(x)
                    n[0](x, r, n[1])
                    return r
                n[0](n[2] if out is x else x, out, n[1])
                return out
            except (BufferError, ValueError, TypeError):
                pass
    MPI = _MPI[0] if _MPI else _load_mpi()
    if comm is None:
        comm = MPI.COMM_WORLD
    # the last communicator and its transport: one identity test instead of an attribute lookup
    direct = True
    if comm is last[0] and last[1].comm is not None:
        t = last[1]
    else:
        direct = type(comm) is MPI.Intracomm  # else a proxy (a counting Wire): sends go through it
        t = comm.Get_attr(_KEY[0]) if _KEY and type(comm) is MPI.Intracomm else None
        if t is None:
            _check_comm(comm)
            t = _transport.of(comm)
            if not _KEY:
                _KEY.append(_transport._keyval)
        if type(comm) is MPI.Intracomm:
            _LAST = (comm, t)
    if check is None:
        check = t.check
    if direct and type(x) is np.ndarray:  # the hot path: a cached schedule and prebuilt arguments
        s = (t.plans.get((x.size, x.dtype, op, algorithm, kernel))
             if type(op) is str and (kernel is None or type(kernel) is str) else None)
        if (s is not None and s.hot is not None and x.flags.c_contiguous
                and (out is None or (out is x and x.flags.writeable)
                     or (type(out) is np.ndarray and out.shape == x.shape and out.dtype == x.dtype
                         and out.flags.c_contiguous and out.flags.writeable and disjoint(out, x)))):
            if check:
                buf = np.empty(8, np.int64)
                t.comm.Allreduce(s.pair, buf, MPI.MAX)
                b = buf.tolist()
                if b[1] & 1 or b[0] != -b[4] or b[1] != -b[5] or b[2] != -b[6]:
                    from . import agreement

                    agreement.explain(t.comm, s.details, None)
            return s.hot(x, out)
    error = None
    try:
        key = (x.size, x.dtype, op, algorithm, kernel)
        if type(x) is not np.ndarray:  # a subclass or a device array: never the hot path's schedule
            key += (type(x),)
        s = t.plans.get(key)
    except (TypeError, AttributeError):  # not an array, or an unhashable argument: validated below
        key = s = None
    if s is None:  # a registry change empties the cache, so what it holds is current
        try:
            s = Schedule(t, x, op, algorithm, kernel)
            if key is not None and s.backend == backends.NUMPY:  # device calls: staging follows the environment
                if len(t.plans) > 4096:
                    t.plans.clear()
                t.plans[key] = s
        except (ArgumentError, TypeError, ValueError) as e:
            s, error = None, e
    fast = (type(x) is np.ndarray and x.flags.c_contiguous
            and (out is None or (out is x and x.flags.writeable)
                 or (type(out) is np.ndarray and out.shape == x.shape and out.dtype == x.dtype
                     and out.flags.c_contiguous and out.flags.writeable and disjoint(out, x))))
    if not fast and error is None:
        try:
            validate_buffers(x, out)
        except ArgumentError as e:
            error = e
    route = FLAT
    if s is None:
        if check:
            check_words(t, np.array([-1, 1, 0, 0], dtype=np.int64), {}, error)
        raise error if isinstance(error, ArgumentError) else ArgumentError(str(error)) from error
    if s.route_min is not None:  # auto on a large host array: the node-aware route is agreed even with check off
        words = s.words.copy()
        if error is None:
            try:
                words[3] = s.route(x, out)
            except Exception as e:  # noqa: BLE001 - must reach the agreement, not leave peers waiting
                error = e
        if error is not None:
            words[1] |= 1
        route = check_words(t, words, s.details, error)
    elif check:
        if error is not None:
            w = s.words.copy()
            w[1] |= 1
            check_words(t, w, s.details, error)
        check_words(t, s.words, s.details, None)
    elif error is not None:
        raise error if isinstance(error, ArgumentError) else ArgumentError(str(error)) from error
    name, fn = s.fn_for(route)
    via = None if isinstance(comm, MPI.Comm) else comm  # a counting proxy: send through it
    if s.staged:  # device array through host memory (to_host waits for the stream that wrote x)
        host = backends.to_host(x)  # a new host array (one copy), reduced in place
        if not (host.flags.writeable and host.flags.c_contiguous):
            host = np.array(host, copy=True)
        hf = host.reshape(-1)
        reduce_flat(t, s, name, fn, hf, hf, via)
        res = x if out is x else (out if out is not None else backends.empty_like(x))
        backends.from_host(host, res)
        return res
    if out is None:
        out = np.empty_like(x) if type(x) is np.ndarray else backends.empty_like(x)
    if type(x) is np.ndarray:
        src = x.reshape(-1) if x.ndim != 1 else x
        dst = src if out is x else (out.reshape(-1) if out.ndim != 1 else out)
    else:
        from .plan import _flat

        src = _flat(x)
        dst = src if out is x else _flat(out)
        if s.backend != backends.NUMPY:
            s.kernel.synchronize()  # x may still be written by a kernel: MPI must not read it before
    reduce_flat(t, s, name, fn, src, dst, via)
    if s.backend != backends.NUMPY:
        s.kernel.synchronize()
    return out
