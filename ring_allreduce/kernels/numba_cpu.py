"""Numba CPU reduction kernels: ``out = (a op b) [/ div]`` in one pass, threaded only where cores allow.

Compiled lazily on first call (no eager signatures) and cached on disk (``cache=True``), so a second process's
first call costs milliseconds, not the ~0.3 s compile. Importing this module imports Numba but compiles nothing.

Threads: ``RING_ALLREDUCE_NUMBA_THREADS`` if set, else ``cpu_count // local_ranks`` (at least 1), where the number
of ranks on this node comes from the launcher (MPICH hydra ``MPI_LOCALNRANKS``, Open MPI
``OMPI_COMM_WORLD_LOCAL_SIZE``, Slurm ``SLURM_NTASKS_PER_NODE``/``SLURM_TASKS_PER_NODE``, ...), so p ranks on one
node do not oversubscribe it. With one thread, or below ``PARALLEL_MIN_BYTES``, the serial loop runs (no thread
start-up cost).

Numerics, the same bits as the NumPy reference except where noted: ``a op b`` is rounded to the dtype (integers
wrap), then floats are divided with one more rounding. Integers: the combine is jitted but the floor division is
NumPy's (libdivide; a jitted Python-semantics ``//`` measured ~10x slower), so integer ``avg`` takes two passes.
float16: Numba's CPU target has no float16 arithmetic (0.68: ``NotImplementedError: float16``), so float16 goes
to NumPy ufuncs computing in float32; with ``div`` the float32 quotient is rounded to float16 once (the NumPy
reference rounds ``a op b`` to float16 first, so the two may differ by one float16 ulp).
"""
from __future__ import annotations

import math
import os

import numpy as np
from numba import njit, prange
from numba.core import types
from numba.extending import overload

from .numpy_kernels import _UFUNCS, HostKernel, apply
from .numpy_kernels import divide as _np_divide

#: below this many bytes per operand the serial loop runs even when threads are allowed (benchmarks/kernels.py:
#: 2 threads reached 0.15-0.5x one thread's bandwidth at 64-256 KiB and gained only from 1 MiB; a parallel region
#: costs ~3 us to start idle, milliseconds when another process holds a core)
PARALLEL_MIN_BYTES = int(os.environ.get("RING_ALLREDUCE_NUMBA_PARALLEL_MIN_BYTES", 1 << 20))

#: environment variables that launchers set to the number of ranks on this node, most specific first
LOCAL_SIZE_VARS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE", "PALS_LOCAL_SIZE",
                   "SLURM_NTASKS_PER_NODE")

_OPS = {"sum": 0, "prod": 1, "min": 2, "max": 3}
#: the dtypes the jitted loops take, each with a 1 of its type (the divisor when there is none)
_ONE = {np.dtype(t): np.dtype(t).type(1) for t in ("float32", "float64", "int32", "int64")}
_F16_BLOCK = 1 << 14  # float32 staging block for float16: stays in L1/L2


def _slurm_tasks_on_this_node(environ) -> int | None:
    """Parse ``SLURM_TASKS_PER_NODE`` (e.g. ``"2(x3),1"``) for this node (``SLURM_NODEID``)."""
    spec = environ.get("SLURM_TASKS_PER_NODE")
    if not spec:
        return None
    counts = []
    for part in spec.split(","):
        num, _, rep = part.partition("(x")
        counts += [int(num)] * (int(rep.rstrip(")")) if rep else 1)
    node = int(environ.get("SLURM_NODEID", 0))
    return counts[node] if node < len(counts) else counts[-1]


def local_ranks(environ=None) -> int:
    """Return how many ranks the launcher placed on this node (1 when no launcher variable is set)."""
    environ = os.environ if environ is None else environ
    for var in LOCAL_SIZE_VARS:
        value = environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return _slurm_tasks_on_this_node(environ) or 1


def cpu_count() -> int:
    """Return the CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads(environ=None, cpus=None) -> int:
    """Return the kernel's thread count: ``$RING_ALLREDUCE_NUMBA_THREADS``, else ``cpus // local ranks``."""
    environ = os.environ if environ is None else environ
    explicit = environ.get("RING_ALLREDUCE_NUMBA_THREADS", "").strip()
    if explicit:
        if not explicit.isdigit() or int(explicit) < 1:
            raise ValueError(f"RING_ALLREDUCE_NUMBA_THREADS must be a positive integer, got {explicit!r}")
        return int(explicit)
    return max(1, (cpu_count() if cpus is None else cpus) // local_ranks(environ))


# ---- scalar helpers, inlined into the loops --------------------------------------------------------------------

@njit(inline="always")
def _min(x, y):
    # NaN propagates, as np.minimum does; of two equal values (+0.0 and -0.0) the negative one: min(-0.0, 0.0) is
    # -0.0 whatever the operand order (the package's min/max semantics, see kernels/__init__.py)
    return x if (x < y or x != x or (x == y and math.copysign(1.0, x) < 0)) else y


@njit(inline="always")
def _max(x, y):
    return x if (x > y or x != x or (x == y and math.copysign(1.0, x) > 0)) else y


@njit(inline="always")
def _combine(x, y, op):
    # op is loop-invariant: LLVM unswitches the loops below into one vectorized loop per op (measured: as fast
    # as four hand-written loops)
    if op == 0:
        return x + y
    if op == 1:
        return x * y
    if op == 2:
        return _min(x, y)
    return _max(x, y)


def _finish(v, d, how):  # pragma: no cover - only the overload below runs (inside jitted code)
    raise NotImplementedError


@overload(_finish, inline="always")
def _finish_impl(v, d, how):
    """Floats: ``v`` (how 0), ``v / d`` (how 1) or ``v * d`` (how 2: ``d`` is the exact reciprocal of a power of two,
    so the product is the same correctly rounded value as the quotient, and faster). Integers: ``v`` as is (their
    floor division is NumPy's, see reduce()); a plain ``v / d if how else v`` would type as float64 and lose int64
    precision even when not dividing."""
    if isinstance(v, types.Integer):
        return lambda v, d, how: v
    return lambda v, d, how: v / d if how == 1 else (v * d if how == 2 else v)


# ---- loops ------------------------------------------------------------------------------------------------------
# Three loops, one per aliasing case: LLVM vectorizes a loop only after a run-time check that its arrays do not
# overlap, so ``out is b`` through the three-array loop fails the check and runs scalar (measured ~6x slower).
# The two-array loops keep the operand order (a op b) so every aliasing case gives the same bits.
# ``div`` is applied to floats only (true division); integer division is left to NumPy (see reduce()).

@njit(cache=True)
def _reduce3(a, b, out, op, d, how):
    for i in range(a.size):
        v = _combine(a[i], b[i], op)
        out[i] = _finish(v, d, how)


@njit(cache=True)
def _reduce_into_a(a, b, op, d, how):
    for i in range(a.size):
        v = _combine(a[i], b[i], op)
        a[i] = _finish(v, d, how)


@njit(cache=True)
def _reduce_into_b(a, b, op, d, how):
    for i in range(a.size):
        v = _combine(a[i], b[i], op)
        b[i] = _finish(v, d, how)


@njit(cache=True)
def _reduce(a, b, out, op, d, how, mode):
    if mode == 0:
        _reduce3(a, b, out, op, d, how)
    elif mode == 1:
        _reduce_into_a(a, b, op, d, how)
    else:
        _reduce_into_b(a, b, op, d, how)


@njit(cache=True)
def _scale(x, out, d):
    for i in range(x.size):
        out[i] = x[i] / d


@njit(cache=True, parallel=True)
def _reduce_par(a, b, out, op, d, how, mode, nblocks):
    # one contiguous block per thread, each running the serial (vectorized) loop on its slice
    n = a.size
    step = (n + nblocks - 1) // nblocks
    for k in prange(nblocks):
        lo = min(n, k * step)
        hi = min(n, lo + step)
        _reduce(a[lo:hi], b[lo:hi], out[lo:hi], op, d, how, mode)


@njit(cache=True, parallel=True)
def _scale_par(x, out, d, nblocks):
    n = x.size
    step = (n + nblocks - 1) // nblocks
    for k in prange(nblocks):
        lo = min(n, k * step)
        hi = min(n, lo + step)
        _scale(x[lo:hi], out[lo:hi], d)


class NumbaCpuKernel(HostKernel):
    """Fused reduce/scale on NumPy arrays with Numba; float16 through NumPy in float32 (see module docstring)."""

    name = "numba"

    def __init__(self, threads: int | None = None, parallel_min_bytes: int | None = None):
        import numba

        want = default_threads() if threads is None else int(threads)
        # Numba's pool has NUMBA_NUM_THREADS workers; more cannot be asked for
        self.threads = max(1, min(want, numba.config.NUMBA_NUM_THREADS))
        self.parallel_min_bytes = PARALLEL_MIN_BYTES if parallel_min_bytes is None else int(parallel_min_bytes)
        self._set_num_threads = numba.set_num_threads

    def _parallel(self, nbytes: int) -> bool:
        if self.threads > 1 and nbytes >= self.parallel_min_bytes:
            # the thread count is per calling thread in Numba: set it on every parallel call (~1 us)
            self._set_num_threads(self.threads)
            return True
        return False

    def reduce(self, a, b, out, op, div=None):
        # kept lean: at 4 KiB the jitted call itself costs ~0.35 us, as much as np.add
        dt = out.dtype
        one = _ONE.get(dt)
        if one is None:  # float16 (the API admits no other dtype)
            return _reduce_f16(a, b, out, op, div)
        mode = 1 if out is a else 2 if out is b else 0
        has_div = div is not None and div != 1
        fdiv = has_div and dt.kind == "f"
        how, d = 0, one
        if fdiv:
            # p a power of two (2, 4, 8, ...): multiply by the exact 1/p, same bits as dividing, ~2x cheaper in cache
            how, d = (2, dt.type(1.0 / div)) if isinstance(div, int) and div & (div - 1) == 0 else (1, dt.type(div))
        if self._parallel(out.nbytes):
            _reduce_par(a, b, out, _OPS[op], d, how, mode, self.threads)
        else:
            _reduce(a, b, out, _OPS[op], d, how, mode)
        if has_div and not fdiv:
            # integer floor division: NumPy's (libdivide) is ~10x faster than a jitted Python-semantics ``//``
            np.floor_divide(out, dt.type(div), out=out)

    def scale(self, x, out, div):
        if div == 1:
            if out is not x:
                np.copyto(out, x)
        elif out.dtype.kind != "f" or out.dtype == np.float16:
            _np_divide(x, out, div)
        elif self._parallel(out.nbytes):
            _scale_par(x, out, out.dtype.type(div), self.threads)
        else:
            _scale(x, out, out.dtype.type(div))


def _reduce_f16(a, b, out, op, div):
    """float16 via NumPy: ``a op b`` in float32, divided in float32, rounded to float16 once."""
    ufunc = _UFUNCS[op]
    if div is None or div == 1:
        apply(op, a, b, out)  # NumPy computes float16 ops in float32 and rounds once
        return
    d = np.float32(div)
    tmp = np.empty(min(out.size, _F16_BLOCK), dtype=np.float32)
    for lo in range(0, out.size, _F16_BLOCK):
        hi = min(out.size, lo + _F16_BLOCK)
        t = tmp[: hi - lo]
        ufunc(a[lo:hi], b[lo:hi], out=t, dtype=np.float32)
        np.divide(t, d, out=out[lo:hi], casting="unsafe")
