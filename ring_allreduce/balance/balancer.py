"""``Balancer``: the trainer's sharder and a callback that re-splits every global batch by measured speed.

Each step the rank times its compute phase (backward included, and any injected straggling or compute floor, as
they are part of what the rank takes) and smooths seconds per sample. Every ``every`` steps the ranks allgather
their estimates (one ``Allgather`` of ``p`` float64 into a preallocated buffer) and every rank derives the same
weights ``1 / seconds_per_sample`` from the same numbers, so the split is agreed without another message. The
global batch and its sample order are unchanged: rank ``r`` takes the ``r``-th contiguous piece of sizes
:func:`~.split.split_counts`. Gradients are already scaled by ``1 / rows in the global batch`` on every rank, so
their sum is the same mean gradient whatever the split (only the summation order differs: last-bit rounding).

With ``forced`` weights (``--balance-speeds``, for tests and studies) the split never changes.

A compute floor (``--compute-floor``) emulates a heavier model; under ``--balance`` it is scaled by this rank's
rows over an equal share, so an emulated step costs time in proportion to the rows computed (otherwise the floor
alone would make every split equally slow).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .split import SpeedEstimate, bounds, split_counts


class Balancer:
    """Sharder (``trainer.sharder``) and callback; ``history`` lists ``(step, counts for a full batch)``."""

    name = "balance"

    def __init__(self, comm, batch_size: int, every: int = 10, forced: Optional[Sequence[float]] = None,
                 alpha: float = 0.3):
        self.comm = comm
        self.p = comm.Get_size()
        self.batch_size, self.every = int(batch_size), int(every)
        self.forced = None if forced is None else [float(x) for x in forced]
        self.weights = np.ones(self.p) if forced is None else np.asarray(self.forced, dtype=np.float64)
        self.estimate = SpeedEstimate(alpha)
        self._gathered = np.empty(self.p, dtype=np.float64)
        self._mine = np.empty(1, dtype=np.float64)
        self._rows = 0
        self._n_global = 0
        self._compute_s = 0.0
        self._straggler = None
        self._floor = 0.0
        self.history = [(0, split_counts(self.batch_size, self.weights).tolist())]

    # -- sharder ----------------------------------------------------------------------------------------------
    def __call__(self, global_batch, rank: int, size: int):
        b = bounds(split_counts(len(global_batch), self.weights))
        self._rows, self._n_global = int(b[rank + 1] - b[rank]), len(global_batch)
        return global_batch[b[rank]:b[rank + 1]]

    # -- callback ---------------------------------------------------------------------------------------------
    def on_train_begin(self, trainer):
        for cb in trainer.callbacks:
            if getattr(cb, "name", None) == "straggle":
                self._straggler = cb.straggler
                self._floor = cb.straggler.floor_s

    def on_step_begin(self, trainer, step):
        self._compute_s = 0.0
        if self._straggler is not None and self._floor > 0 and self._n_global:
            self._straggler.floor_s = self._floor * self._rows * self.p / self._n_global

    def on_phase(self, trainer, step, name, t0, t1):
        if name == "compute":
            self._compute_s += t1 - t0

    def on_step_end(self, trainer, step, result):
        self.estimate.observe(self._compute_s, self._rows)
        if self.forced is None and (step + 1) % self.every == 0:
            self.resplit(step + 1)

    def resplit(self, step: int) -> None:
        """Allgather the estimates and set the weights every rank derives from them (collective)."""
        from mpi4py import MPI

        self._mine[0] = self.estimate.value if self.estimate.value is not None else np.nan
        self.comm.Allgather(self._mine, [self._gathered, MPI.DOUBLE])
        t = self._gathered
        known = np.isfinite(t) & (t > 0)
        if not known.all():  # a rank without an estimate yet keeps its current weight relative to the others
            return
        self.weights = 1.0 / t
        self.history.append((step, split_counts(self.batch_size, self.weights).tolist()))

    # -- checkpoints and report -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"weights": self.weights.copy(), "estimate": np.float64(np.nan if self.estimate.value is None
                                                                       else self.estimate.value)}

    def load_state_dict(self, d: dict) -> None:
        self.weights = np.asarray(d["weights"], dtype=np.float64)
        e = float(d["estimate"])
        self.estimate.value = None if np.isnan(e) else e

    def report(self) -> dict:
        """Split history (rows per rank of a full batch), the final weights and every rank's estimate."""
        est = self.comm.allgather(self.estimate.value)
        return {"every": self.every, "forced": self.forced, "splits": [{"step": s, "rows": c} for s, c in self.history],
                "seconds_per_sample": est}
