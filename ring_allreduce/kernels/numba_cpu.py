"""Numba CPU reduction kernels: ``out = (a op b) [/ div]`` in one pass, threaded only where cores allow.

Compiled lazily on first call (no eager signatures) and cached on disk (``cache=True``), so a second process's
first call costs milliseconds, not the ~0.3 s compile. Importing this module imports Numba but compiles nothing.

Threads: ``RING_ALLREDUCE_NUMBA_THREADS`` if set, else ``cpu_count // local_ranks`` (at least 1), where the number
of ranks on this node comes from the launcher (MPICH hydra ``MPI_LOCALNRANKS``, Open MPI
``OMPI_COMM_WORLD_LOCAL_SIZE``, Slurm ``SLURM_NTASKS_PER_NODE``/``SLURM_TASKS_PER_NODE``, ...), so p ranks on one
node do not oversubscribe it. With one thread, or below ``PARALLEL_MIN_BYTES``, the serial loop runs (no thread
start-up cost).

float16: Numba's CPU target has no float16 arithmetic (0.68: ``NotImplementedError: float16``), so float16 is
delegated to NumPy ufuncs computing in float32; with ``div`` the float32 quotient is rounded to float16 once.
"""
from __future__ import annotations

import os

import numpy as np
from numba import njit, prange
from numba.core import types
from numba.extending import overload

from .numpy_kernels import NumpyKernel, divide as _np_divide

#: below this many bytes per operand the serial loop runs even when threads are allowed (measured:
#: benchmarks/kernels.py; a parallel region costs a few microseconds to start)
PARALLEL_MIN_BYTES = int(os.environ.get("RING_ALLREDUCE_NUMBA_PARALLEL_MIN_BYTES", 1 << 20))

#: environment variables that launchers set to the number of ranks on this node, most specific first
LOCAL_SIZE_VARS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE", "PALS_LOCAL_SIZE",
                   "SLURM_NTASKS_PER_NODE")

_OPS = {"sum": 0, "prod": 1, "min": 2, "max": 3}
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

def _divide(x, d):  # pragma: no cover - replaced by the overload inside jitted code
    raise NotImplementedError


@overload(_divide, inline="always")
def _divide_impl(x, d):
    """True division for floats, floor division for integers (the overload picks one at compile time)."""
    if isinstance(x, types.Integer):
        return lambda x, d: x // d
    return lambda x, d: x / d


@njit(inline="always")
def _min(x, y):
    return x if (x < y or x != x) else y  # NaN propagates, as np.minimum does


@njit(inline="always")
def _max(x, y):
    return x if (x > y or x != x) else y


# ---- loops ------------------------------------------------------------------------------------------------------
# The op is a branch outside each loop, so every loop is a plain elementwise loop that LLVM vectorizes. With a
# divisor the combined value is stored, then divided: the store wraps integers exactly as NumPy does before the
# floor division, and for floats it is exact (a op b is already rounded to the dtype).

@njit(cache=True)
def _reduce(a, b, out, op):
    n = a.size
    if op == 0:
        for i in range(n):
            out[i] = a[i] + b[i]
    elif op == 1:
        for i in range(n):
            out[i] = a[i] * b[i]
    elif op == 2:
        for i in range(n):
            out[i] = _min(a[i], b[i])
    else:
        for i in range(n):
            out[i] = _max(a[i], b[i])


@njit(cache=True)
def _reduce_div(a, b, out, op, d):
    n = a.size
    if op == 0:
        for i in range(n):
            out[i] = a[i] + b[i]
            out[i] = _divide(out[i], d)
    elif op == 1:
        for i in range(n):
            out[i] = a[i] * b[i]
            out[i] = _divide(out[i], d)
    elif op == 2:
        for i in range(n):
            out[i] = _divide(_min(a[i], b[i]), d)
    else:
        for i in range(n):
            out[i] = _divide(_max(a[i], b[i]), d)


@njit(cache=True)
def _scale(x, out, d):
    for i in range(x.size):
        out[i] = _divide(x[i], d)


@njit(cache=True, parallel=True)
def _reduce_par(a, b, out, op, d, has_div, nblocks):
    # one contiguous block per thread: each runs the serial (vectorized) loop on its slice
    n = a.size
    step = (n + nblocks - 1) // nblocks
    for k in prange(nblocks):
        lo = min(n, k * step)
        hi = min(n, lo + step)
        if has_div:
            _reduce_div(a[lo:hi], b[lo:hi], out[lo:hi], op, d)
        else:
            _reduce(a[lo:hi], b[lo:hi], out[lo:hi], op)


@njit(cache=True, parallel=True)
def _scale_par(x, out, d, nblocks):
    n = x.size
    step = (n + nblocks - 1) // nblocks
    for k in prange(nblocks):
        lo = min(n, k * step)
        hi = min(n, lo + step)
        _scale(x[lo:hi], out[lo:hi], d)


class NumbaCpuKernel:
    """Fused reduce/scale on NumPy arrays with Numba; float16 through NumPy in float32 (see module docstring)."""

    name = "numba"
    backend = "numpy"

    def __init__(self, threads: int | None = None, parallel_min_bytes: int | None = None):
        import numba

        want = default_threads() if threads is None else int(threads)
        # Numba's pool has NUMBA_NUM_THREADS workers; more cannot be asked for
        self.threads = max(1, min(want, numba.config.NUMBA_NUM_THREADS))
        self.parallel_min_bytes = PARALLEL_MIN_BYTES if parallel_min_bytes is None else int(parallel_min_bytes)
        self._set_num_threads = numba.set_num_threads
        self._numpy = NumpyKernel()

    def _parallel(self, nbytes: int) -> bool:
        if self.threads > 1 and nbytes >= self.parallel_min_bytes:
            # the thread count is per calling thread in Numba: set it on every parallel call
            self._set_num_threads(self.threads)
            return True
        return False

    def reduce(self, a, b, out, op, div=None):
        code = _OPS[op]
        if out.dtype == np.float16:
            return _reduce_f16(a, b, out, op, div)
        has_div = div is not None and div != 1
        if self._parallel(out.nbytes):
            d = out.dtype.type(div if has_div else 1)
            _reduce_par(a, b, out, code, d, has_div, self.threads)
        elif has_div:
            _reduce_div(a, b, out, code, out.dtype.type(div))
        else:
            _reduce(a, b, out, code)

    def scale(self, x, out, div):
        if div == 1:
            if out is not x:
                np.copyto(out, x)
        elif out.dtype == np.float16:
            _np_divide(x, out, div)
        elif self._parallel(out.nbytes):
            _scale_par(x, out, out.dtype.type(div), self.threads)
        else:
            _scale(x, out, out.dtype.type(div))

    def copy(self, dst, src):
        np.copyto(dst, src)

    def empty(self, n, dtype):
        return np.empty(n, dtype=dtype)

    def synchronize(self):
        pass


_F16_UFUNCS = {"sum": np.add, "prod": np.multiply, "min": np.minimum, "max": np.maximum}


def _reduce_f16(a, b, out, op, div):
    """float16 via NumPy: ``a op b`` in float32, divided in float32, rounded to float16 once."""
    ufunc = _F16_UFUNCS[op]
    if div is None or div == 1:
        ufunc(a, b, out=out)  # NumPy computes float16 ops in float32 and rounds once
        return
    d = np.float32(div)
    tmp = np.empty(min(out.size, _F16_BLOCK), dtype=np.float32)
    for lo in range(0, out.size, _F16_BLOCK):
        hi = min(out.size, lo + _F16_BLOCK)
        t = tmp[: hi - lo]
        ufunc(a[lo:hi], b[lo:hi], out=t, dtype=np.float32)
        np.divide(t, d, out=out[lo:hi], casting="unsafe")
