"""The public entry point: :func:`allreduce`."""
from __future__ import annotations

import os

import numpy as np

from . import agreement, algorithms, backends, kernels
from .algorithms import auto
from .algorithms.shm_path import route as shm_route
from .errors import ArgumentError
from .ops import check_dtype, dtype_code, normalize_op, op_code


def _default_check() -> bool:
    return os.environ.get("RING_ALLREDUCE_CHECK", "1").lower() not in ("0", "false", "no", "off")


_MPI: list = []  # mpi4py.MPI once loaded: `from mpi4py import MPI` costs ~0.3 us per call
#: fast-path plans: (p, count, dtype, op, algorithm, kernel, $RING_ALLREDUCE_KERNEL) -> _Plan
_plans: dict = {}
_ENV_DATA = getattr(os.environ, "_data", None)  # read env without os.environ.get's per-call encode/decode
_KERNEL_ENV_KEY = os.environ.encodekey("RING_ALLREDUCE_KERNEL") if hasattr(os.environ, "encodekey") else None


def _load_mpi():
    from mpi4py import MPI

    _MPI.append(MPI)
    return MPI


def allreduce(x, comm=None, *, op="sum", algorithm="auto", out=None, check=None, kernel=None):
    """Reduce ``x`` across all ranks of ``comm`` and return the result on every rank.

    Args:
        x: C-contiguous NumPy, CuPy or Numba CUDA array of any shape; float16/32/64 or int32/64.
        comm: an mpi4py intracommunicator; None means ``MPI.COMM_WORLD``.
        op: ``"sum"``, ``"avg"``, ``"prod"``, ``"min"``, ``"max"`` or the matching ``MPI.Op``. Integer ``avg``
            floor-divides the sum; float16 ``avg`` divides each input by p before summing, so it cannot overflow
            where the inputs do not.
        algorithm: a registered name (``ring``, ``tree``, ``recursive_doubling``, ``rabenseifner``, ``mpi``, ...)
            or ``"auto"`` (chosen by size, p and dtype from the tuning table).
        out: optional output array of the same shape, dtype and backend; ``out=x`` reduces in place.
        check: agree count/dtype/op/algorithm across ranks before sending data (one 32-byte collective); on
            disagreement every rank raises the same :class:`MismatchError`. Default on;
            ``RING_ALLREDUCE_CHECK=0`` turns it off (benchmarks).
        kernel: reduction kernel name overriding the backend's default (see :mod:`ring_allreduce.kernels`).
    """
    MPI = _MPI[0] if _MPI else _load_mpi()
    if comm is None:
        comm = MPI.COMM_WORLD
    if check is None:
        check = _default_check()
    if type(x) is np.ndarray and type(comm) is MPI.Intracomm:
        result = _fast(x, comm, op, algorithm, out, kernel, check)
        if result is not None:
            return result
    if not isinstance(comm, MPI.Comm) or comm.Is_inter() or not isinstance(comm, MPI.Intracomm):
        raise ArgumentError(f"comm must be an mpi4py intracommunicator, got {type(comm).__name__}")
    try:
        call = _Call(x, comm, op, algorithm, out, kernel)
        error = None
    except (ArgumentError, TypeError, ValueError) as e:
        call, error = None, e
    if check:
        if call is None:
            words = agreement.pack(True, -1, 0, 0, 0)
            details = {}
        else:
            words, details = call.signature()
        agreement.check(comm, words, details, error)
    elif error is not None:
        raise error if isinstance(error, ArgumentError) else ArgumentError(str(error)) from error
    return call.run()


class _Call:
    """One validated allreduce call: resolved backend, kernel, op and algorithm."""

    __slots__ = ("x", "out", "comm", "op", "algorithm", "fn", "kernel", "backend", "inplace", "staged")

    def __init__(self, x, comm, op, algorithm, out, kernel):
        try:
            self.backend = backends.array_backend(x)
        except TypeError as e:
            raise ArgumentError(str(e)) from None
        if not backends.is_c_contiguous(x):
            raise ArgumentError("x must be C-contiguous (use np.ascontiguousarray or .copy())")
        check_dtype(x.dtype)
        self.x, self.comm = x, comm
        self.op = normalize_op(op)
        self.inplace = out is x
        if out is not None and not self.inplace:
            self._check_out(out)
        self.out = out
        if not isinstance(algorithm, str):
            raise ArgumentError(f"algorithm must be a name, got {algorithm!r}")
        name = algorithm
        if name == "auto":
            # node-aware first: shared-memory-resident arrays and multi-node communicators (ring_allreduce.shm)
            name = shm_route(x, out, comm) or auto.select(x.size * x.dtype.itemsize, comm.Get_size(), x.dtype)
        self.fn = algorithms.get(name)
        self.algorithm = name
        self.staged = self.backend != backends.NUMPY and not backends.cuda_aware_mpi()
        self.kernel = kernels.for_backend(backends.NUMPY if self.staged else self.backend, kernel)

    def _check_out(self, out):
        try:
            ob = backends.array_backend(out)
        except TypeError as e:
            raise ArgumentError(f"out: {e}") from None
        if ob != self.backend:
            raise ArgumentError(f"out is a {ob} array but x is a {self.backend} array")
        if tuple(out.shape) != tuple(self.x.shape) or out.dtype != self.x.dtype:
            raise ArgumentError(f"out has shape {tuple(out.shape)} and dtype {out.dtype}; "
                                f"expected {tuple(self.x.shape)} and {self.x.dtype}")
        if not backends.is_c_contiguous(out):
            raise ArgumentError("out must be C-contiguous")
        if ob == backends.NUMPY and np.may_share_memory(out, self.x):
            raise ArgumentError("out overlaps x without being x; pass out=x for in-place")

    def signature(self):
        words = agreement.pack(False, int(self.x.size), dtype_code(self.x.dtype), op_code(self.op),
                               agreement.algorithm_code(self.algorithm))
        details = {"count": int(self.x.size), "dtype": str(self.x.dtype), "op": self.op, "algorithm": self.algorithm}
        return words, details

    def run(self):
        x = self.x
        if self.staged:  # device array through host memory (stream synchronized by to_host)
            host = np.array(backends.to_host(x), copy=True)
            result = _reduce(self.comm, host, host, self.op, self.fn, self.kernel)
            out = self.x if self.inplace else (self.out if self.out is not None else backends.empty_like(x))
            backends.from_host(result, out)
            return out
        out = x if self.inplace else (self.out if self.out is not None else backends.empty_like(x))
        if self.backend != backends.NUMPY:
            backends.synchronize(self.backend)
        return _reduce(self.comm, x, out, self.op, self.fn, self.kernel)


def _reduce(comm, x, out, op, fn, kernel):
    src = backends.flat(x)
    dst = src if out is x else backends.flat(out)
    n, p = src.size, comm.Get_size()
    div = p if op == "avg" else None
    if op == "avg":
        op = "sum"
        if src.dtype == np.float16 and p > 1:
            # divide first so the fp16 sum cannot overflow where the inputs do not
            kernel.scale(src, dst, p)
            src, div = dst, None
    if n == 0:
        return out
    if p == 1:
        if dst is not src:
            kernel.copy(dst, src)
        return out
    fn(comm, src, dst, op, kernel, div)
    return out


class _Plan:
    """What the full validation resolved for one (p, count, dtype, op, algorithm, kernel) of plain NumPy arrays."""

    __slots__ = ("name", "fn", "kernel", "kernel_name", "op", "auto_table", "words", "details")

    def __init__(self, call: _Call, kernel_name: str, auto_table):
        self.name, self.fn, self.kernel, self.op = call.algorithm, call.fn, call.kernel, call.op
        self.kernel_name, self.auto_table = kernel_name, auto_table
        words, self.details = call.signature()
        self.words = np.concatenate([words, -words])  # what agreement.check sends, built once

    def current(self) -> bool:
        """Still what a fresh resolution would give (registries and the auto table unchanged)?"""
        return (algorithms.registry._items.get(self.name) is self.fn
                and kernels.registry.built(self.kernel_name) is self.kernel
                and (self.auto_table is None or self.auto_table is auto._table))


def _fast(x, comm, op, algorithm, out, kernel, check):
    """Run a call on C-contiguous NumPy arrays from a cached plan, skipping re-validation; None: take the full path.

    Same behaviour as the full path: the plan is what ``_Call`` resolved for the same p, count, dtype, op,
    algorithm, kernel and ``$RING_ALLREDUCE_KERNEL``, and it is dropped when a registry or the auto table changes.
    ``auto`` still asks the shared-memory router on every call (it depends on where ``x`` lives). With ``check``
    the plan's prebuilt words go through the same single ``MPI.Allreduce`` as :func:`agreement.check` (so it
    pairs with a rank on the full path), and a disagreement is explained by the same code on every rank.
    """
    if not x.flags.c_contiguous or type(op) is not str or type(algorithm) is not str:
        return None
    inplace = out is x
    if not inplace and out is not None:
        if (type(out) is not np.ndarray or out.shape != x.shape or out.dtype != x.dtype
                or not out.flags.c_contiguous or np.may_share_memory(out, x)):
            return None
    env = _ENV_DATA.get(_KERNEL_ENV_KEY) if _ENV_DATA is not None and _KERNEL_ENV_KEY is not None else None
    p = comm.Get_size()
    key = (p, x.size, x.dtype, op, algorithm, kernel, env)
    try:
        plan = _plans.get(key)
    except TypeError:  # an unhashable kernel argument
        return None
    if plan is None or not plan.current():
        try:
            call = _Call(x, comm, op, algorithm, x if inplace else out, kernel)
        except (ArgumentError, TypeError, ValueError):
            return None  # the full path raises it (after the agreement check where that is on)
        if call.staged or call.backend != backends.NUMPY:
            return None
        if algorithm == "auto":  # cache the table's pick, not the router's (that depends on x)
            name = auto.select(x.size * x.dtype.itemsize, p, x.dtype)
            call.algorithm, call.fn = name, algorithms.get(name)
        if len(_plans) > 4096:
            _plans.clear()
        kname = kernel or os.environ.get("RING_ALLREDUCE_KERNEL") or kernels.DEFAULTS[backends.NUMPY]
        plan = _plans[key] = _Plan(call, kname, auto._table if algorithm == "auto" else None)
    if algorithm == "auto" and p > 1 and shm_route(x, out, comm) is not None:
        return None
    if check:
        MPI = _MPI[0]
        buf = np.empty_like(plan.words)
        comm.Allreduce(plan.words, buf, MPI.MAX)
        if not agreement.agreed(buf):
            agreement.explain(comm, plan.details, None)
    if out is None:
        out = np.empty_like(x)
    return _reduce(comm, x, out, plan.op, plan.fn, plan.kernel)
