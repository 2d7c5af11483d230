"""``DistributedOptimizer``: bucketed gradient averaging with overlap, then SGD with momentum and weight decay.

Extension points (names are stable; other modules plug in here without touching the trainer):

**Comm hook** -- ``opt.register_comm_hook(state, hook)``; ``hook(state, bucket) -> reduced array | pending``
(see :mod:`ring_allreduce.train.hooks`). The default is :func:`~ring_allreduce.train.hooks.allreduce_hook`
(sum of the pre-scaled gradients over all ranks with ``--algorithm``, i.e. the average). ``state`` may define
``state_dict()`` / ``load_state_dict(d)`` (plain arrays/ints/floats/strings), saved in checkpoints per rank.
``opt.comm`` is a :class:`~ring_allreduce.train.transport.CountingComm`: send through it to be counted in
``bytes_sent``.

**Gradient storage allocator** -- ``DistributedOptimizer(..., alloc=fn)`` with ``fn(n, dtype) -> 1-D array``;
the buckets are views of that one array (e.g. arrays resident in a shared-memory window).

**Step strategy** -- see :mod:`ring_allreduce.train.trainer`: ``trainer.strategy`` replaces the synchronous
compute + exchange of a step (e.g. backup workers choose the contributing ranks); it uses this object's
``begin()``, ``grad_ready(n)``, ``synchronize()``, ``reduce_stats()`` and the storage's ``buckets``.

**Callbacks** (``trainer.callbacks``: ``after_backward``, ``on_phase``, ``on_step_end``, ...) and **CLI plugins**
(``ring_allreduce/<pkg>/train_plugin.py``: flags, ``before_build``/``after_build``/``report``) are documented in
:mod:`ring_allreduce.train.trainer` and :mod:`ring_allreduce.train.plugins`.

The update (PyTorch's SGD): ``g += wd * w; v = mu * v + g; w -= lr * v``, on flat arrays (one fused Numba pass
for host arrays when Numba is installed).
"""
from __future__ import annotations

import importlib.util
import math
from typing import Callable, Optional, Sequence

import numpy as np

from .buckets import BucketExchange, GradientStorage
from .hooks import AllreduceState, allreduce_hook, reduce_sum
from .transport import CountingComm


class WarmupSchedule:
    """Linear-scaling rule with warmup: ``lr * batch/ref_batch``, reached linearly over ``warmup_steps``.

    During warmup step ``t`` uses ``target * (t + 1) / warmup_steps`` (Goyal et al. 2017 ramp, started near 0);
    with ``total_steps > 0`` the rate then decays along a half cosine to 0 at ``total_steps``.
    """

    def __init__(self, lr: float, batch_size: int, ref_batch: int = 0, warmup_steps: int = 0, total_steps: int = 0):
        self.base = float(lr)
        self.scale = batch_size / ref_batch if ref_batch and ref_batch > 0 else 1.0
        self.target = self.base * self.scale
        self.warmup_steps, self.total_steps = int(warmup_steps), int(total_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.target * (step + 1) / self.warmup_steps
        if self.total_steps > self.warmup_steps:
            frac = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
            return self.target * 0.5 * (1.0 + math.cos(math.pi * frac))
        return self.target


class DistributedOptimizer:
    """Average gradients over ``comm`` bucket by bucket and apply SGD; see the module docstring for the hooks.

    Args:
        comm: mpi4py intracommunicator (wrapped in a :class:`CountingComm`).
        params: the flat parameter array (updated in place); broadcast from rank 0 unless ``broadcast=False``.
        specs: parameter layout (``name``, ``offset``, ``size`` in backward order), e.g. ``Network.specs``.
        lr: a float or a callable ``step -> lr``.
        update: ``"numpy"`` (reference), ``"numba"`` (one fused pass) or ``"auto"`` (Numba for host arrays when
            installed). Ranks must agree (they do when they get the same command line).
    """

    def __init__(self, comm, params, specs: Sequence, *, lr=0.1, momentum: float = 0.9, weight_decay: float = 0.0,
                 algorithm: str = "auto", bucket_mb: float = 1.0, overlap: str = "thread",
                 alloc: Optional[Callable] = None, broadcast: bool = True, update: str = "auto"):
        self.comm = comm if isinstance(comm, CountingComm) else CountingComm(comm)
        self.params = params
        self.lr = lr if callable(lr) else (lambda step, _lr=float(lr): _lr)
        self.momentum, self.weight_decay = float(momentum), float(weight_decay)
        self.algorithm = algorithm
        self.storage = GradientStorage(specs, params.size, params.dtype, bucket_mb, alloc)
        self.grad = self.storage.flat
        self.buckets = self.storage.buckets
        self.velocity = np.zeros_like(params)
        self._fused = _fused_update(update, params)
        self.steps = 0
        if overlap == "thread" and self.comm.Get_size() > 1:
            from mpi4py import MPI

            if MPI.Query_thread() < MPI.THREAD_SERIALIZED:  # the comm thread calls MPI while main does not
                raise ValueError("overlap='thread' needs MPI_THREAD_SERIALIZED or higher (mpi4py's default is "
                                 "MULTIPLE; mpi4py.rc.thread_level was lowered); use overlap='nonblocking'")
        self.hook_state = AllreduceState(self.comm, algorithm, nonblocking=overlap == "nonblocking")
        self.exchange = BucketExchange(self.storage, allreduce_hook, self.hook_state, overlap)
        if self.comm.Get_size() > 1:
            self._agree_layout(overlap)
            if broadcast:
                self.comm.comm.Bcast(params, root=0)

    def _agree_layout(self, overlap) -> None:
        """Every rank raises the same error unless all hold the same parameter count, dtype and buckets."""
        from ..errors import MismatchError

        mine = (int(self.params.size), str(self.params.dtype), overlap, str(self.algorithm),
                tuple((b.start, b.stop) for b in self.buckets))
        everyone = self.comm.comm.allgather(mine)
        bad = [r for r, m in enumerate(everyone) if m != everyone[0]]
        if bad:
            raise MismatchError(f"ranks {bad} have a different model/bucket layout from rank 0 "
                                f"(rank 0: {everyone[0][0]} {everyone[0][1]} parameters, overlap {everyone[0][2]}, "
                                f"algorithm {everyone[0][3]}, {len(everyone[0][4])} buckets)")

    # -- hooks ---------------------------------------------------------------------------------------------------
    def register_comm_hook(self, state, hook) -> None:
        """Use ``hook(state, bucket)`` for every bucket from now on (replaces the default allreduce)."""
        self.hook_state = state
        self.exchange.set_hook(hook, state)

    # -- one step, in the order a step strategy calls them -------------------------------------------------------
    def begin(self) -> None:
        """Start a step's exchange (no bucket launched yet)."""
        self.exchange.begin()

    def grad_ready(self, n: int) -> None:
        """Backward's callback: ``grad[:n]`` is final; launch the buckets it completes."""
        self.exchange.ready(n)

    def synchronize(self) -> None:
        """Launch what is left and wait until ``grad`` holds the reduced gradient."""
        self.exchange.finish()

    def reduce_stats(self, stats: np.ndarray) -> np.ndarray:
        """Sum a small float64 vector (sample count, loss sum, correct, ...) exactly over all ranks, in place."""
        reduce_sum(self.comm, stats, self.algorithm)
        return stats

    def step(self, grad_scale: float = 1.0, span: Optional[slice] = None, decay_scale: float = 1.0) -> None:
        """Apply one SGD update with ``grad * grad_scale`` (the scale corrects for rows not contributed).

        ``span`` updates only ``[span]`` of the flat arrays (a parameter server's shard; the update is element-wise,
        so it equals the full update restricted to the span, bit for bit); ``decay_scale`` multiplies the weight
        decay (a server applying one worker's share of a step applies that share of the decay).
        """
        g, w, v = self.grad, self.params, self.velocity
        if span is not None:
            g, w, v = g[span], w[span], v[span]
        wd = self.weight_decay * decay_scale
        if self._fused is not None:
            t = w.dtype.type
            self._fused(w, g, v, t(self.lr(self.steps)), t(self.momentum), t(wd), t(grad_scale))
            self.steps += 1
            return
        if grad_scale != 1.0:
            g *= g.dtype.type(grad_scale)
        if wd:
            g += g.dtype.type(wd) * w
        lr = self.lr(self.steps)
        if self.momentum:
            v *= v.dtype.type(self.momentum)
            v += g
            w -= w.dtype.type(lr) * v
        else:
            w -= w.dtype.type(lr) * g
        self.steps += 1

    def close(self) -> None:
        self.exchange.close()

    # -- checkpoints --------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"velocity": self.velocity.copy(), "steps": int(self.steps)}

    def load_state_dict(self, d: dict) -> None:
        if d["velocity"].shape != self.velocity.shape:
            raise ValueError(f"checkpoint momentum has {d['velocity'].size} entries; the model has "
                             f"{self.velocity.size}")
        self.velocity[...] = d["velocity"]
        self.steps = int(d["steps"])


def _fused_update(update: str, params):
    """The fused Numba SGD kernel, or None for the NumPy update (device arrays always use the array module)."""
    if update not in ("auto", "numpy", "numba"):
        raise ValueError(f"update must be 'auto', 'numpy' or 'numba', got {update!r}")
    if update == "numpy" or not isinstance(params, np.ndarray):
        return None
    if update == "auto" and importlib.util.find_spec("numba") is None:
        return None
    from .mlp_numba import sgd_momentum_update

    return sgd_momentum_update
