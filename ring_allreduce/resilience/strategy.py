"""The trainer's step strategy for backup workers (``--backup-workers b``), built on :class:`~.backup.BackupWorkers`.

Per step on each rank: compute the gradient *without* launching bucket exchanges (who takes part is not known
yet), announce it, and then, as the decision says:

* contributor: sum the buckets and the step statistics over the contributors' sub-communicator (when every rank
  contributes, through the optimizer's own bucket exchange and comm hook on the full communicator: exactly the
  synchronous path); the trainer rescales the sum by ``n_global / rows`` (the rows of the contributors), so the
  update is the mean gradient over the contributors' rows, and applies it. Afterwards (``on_step_end``) the
  step's server sends the new state to the ranks catching up;
* late: receive parameters, momentum and the optimizer step count from the server and return zero rows (the
  trainer then applies no update); the following steps this rank skipped return at once until it is back at the
  job's step.

Synchronisation points: everything in the trainer that needs all ranks (end of an epoch with its evaluation, a
checkpoint, the end of training) is preceded by :meth:`BackupWorkers.sync`, called from ``on_step_end`` of the
step before it, so a late rank is brought to the same step first. Checkpoints therefore hold the same state on
every rank, and a resumed job restarts the protocol at the checkpoint's step.
"""
from __future__ import annotations

import time
from typing import Optional

import numpy as np

from .backup import BackupWorkers


class BackupStep:
    """``trainer.strategy`` *and* a callback (append it to ``trainer.callbacks`` too); see the module docstring."""

    name = "backup"

    def __init__(self, backup_workers: int, staleness: int = 0, timeout: Optional[float] = None):
        self.b, self.staleness, self.timeout = int(backup_workers), int(staleness), timeout
        self.bw: Optional[BackupWorkers] = None
        self._pending = None
        self._since = 0
        self._meta = np.zeros(1, dtype=np.float64)
        self.roles = {"contributor": 0, "late": 0, "stale": 0, "skipped": 0}

    # -- callback side ----------------------------------------------------------------------------------------
    def on_train_begin(self, trainer):
        if trainer.model.xp is not np:
            raise ValueError("--backup-workers transfers host (NumPy) state; GPU models are not supported")
        self.bw = BackupWorkers(trainer.comm, self.b, staleness=self.staleness, start_step=trainer.global_step,
                                timeout=self.timeout)
        self._meta[0] = trainer.optimizer.steps
        self._since = trainer.global_step

    def _state(self, trainer):
        opt = trainer.optimizer
        return [opt.params, opt.velocity, self._meta]

    def on_step_end(self, trainer, step, result):
        bw, opt = self.bw, trainer.optimizer
        if self._pending is not None:
            d, self._pending = self._pending, None
            self._meta[0] = opt.steps  # the late ranks' learning-rate schedule continues from here
            with trainer.timer.phase("serve" if bw.rank == d.server and d.catchup else "update"):
                bw.finish(d, self._state(trainer))
        if self._sync_point(trainer):
            self._meta[0] = opt.steps  # this rank is up to date: it may serve the flush
            with trainer.timer.phase("sync"):
                bw.sync(self._state(trainer))
                self._share_stats(trainer)

    def _share_stats(self, trainer):
        """Give every rank the running epoch statistics of the rank that contributed most since the last sync.

        A rank that was left out does not know the loss of the steps it skipped, so rank 0's progress line would
        otherwise undercount whenever rank 0 is the straggler. Every rank holds every decision, so all pick the
        same source rank without communicating.
        """
        counts = [0] * self.bw.p
        for d in self.bw.decisions:
            if d.step >= self._since:
                for r in d.contributors:
                    counts[r] += 1
        self._since = self.bw.version
        best = counts.index(max(counts))
        acc = trainer.comm.bcast(dict(trainer._acc) if trainer.rank == best else None, root=best)
        trainer._acc.update(acc)

    def on_train_end(self, trainer, result):
        self.bw.close(self._state(trainer))

    @staticmethod
    def _sync_point(trainer) -> bool:
        """True when the trainer's next action after this step needs every rank (see the module docstring)."""
        nxt = trainer.global_step + 1
        per_epoch = -(-len(trainer.task.train) // trainer.batch_size)
        return (trainer.step_in_epoch + 1 >= per_epoch
                or (trainer.checkpoint_every and nxt % trainer.checkpoint_every == 0)
                or (trainer.max_steps and nxt >= trainer.max_steps))

    # -- strategy side ----------------------------------------------------------------------------------------
    def __call__(self, trainer, X, y, n_global):
        from ..train.hooks import reduce_sum
        from ..train.trainer import StepResult
        from ..train.transport import CountingComm

        bw, opt, timer = self.bw, trainer.optimizer, trainer.timer
        if trainer.global_step < bw.version:  # caught up past this step: nothing to compute or send
            self.roles["skipped"] += 1
            return StepResult(0, 0.0, 0, [])
        if trainer.global_step != bw.version:
            raise RuntimeError(f"rank {bw.rank}: trainer at step {trainer.global_step}, backup protocol at "
                               f"{bw.version}")
        with timer.phase("compute"):
            t0 = time.perf_counter()
            loss, correct = trainer.model.loss_and_grad(opt.params, X, y, opt.grad, 1.0 / n_global)
            trainer.after_backward(time.perf_counter() - t0)
        with timer.phase("wait"):
            d = bw.decide()
        stats = np.array([X.shape[0], loss, correct], dtype=np.float64)
        if bw.rank in d.contributors:
            with timer.phase("comm"):
                if len(d.contributors) == bw.p:  # everyone: the synchronous path, hook and all
                    opt.begin()
                    opt.grad_ready(opt.grad.size)
                    opt.synchronize()
                    opt.reduce_stats(stats)
                else:
                    sub = CountingComm(bw.subcomm(d.contributors))
                    # node-wide shared-memory paths belong to the full communicator: a subset uses flat ones
                    algo = "auto" if opt.algorithm in ("shm", "hierarchical") else opt.algorithm
                    for bucket in opt.buckets:
                        reduce_sum(sub, bucket.buffer, algo)
                    reduce_sum(sub, stats, algo)
                    opt.comm.bytes_sent += sub.bytes_sent
                    opt.comm.messages += sub.messages
            if len(d.contributors) == bw.p:
                trainer.record_bucket_spans()
        role = bw.role(d)
        self.roles[role] += 1
        if role != "contributor":
            with timer.phase("catchup"):
                bw.finish(d, self._state(trainer))
            opt.steps = int(self._meta[0])
            return StepResult(0, 0.0, 0, list(d.contributors))
        self._pending = d
        return StepResult(int(stats[0]), float(stats[1]), int(stats[2]), list(d.contributors))

    def report(self, comm) -> dict:
        """Per-rank counts of roles and, from the decisions, how often each rank contributed (collective)."""
        roles = comm.allgather(dict(self.roles))
        counts = self.bw.contributor_counts() if self.bw is not None else {}
        return {"backup_workers": self.b, "staleness": self.staleness, "decided_steps": len(self.bw.decisions),
                "contributions": [counts.get(r, 0) for r in range(comm.Get_size())], "roles": roles}
