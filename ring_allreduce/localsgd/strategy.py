"""The local-SGD step strategy: H local steps per rank, then parameters and momentum averaged over the ranks.

Each rank steps on the gradient of its own shard of the global batch (its local mean gradient: the same SGD
update, momentum and weight decay as the synchronous trainer, on local state). After every ``H`` local steps,
and at every synchronisation step (epoch end, checkpoint, last step: the evaluation and the checkpoint need one
model), the ranks average their parameters **and momentum** through the trainer's own gradient-bucket exchange
(the comm hook with ``--algorithm``, counted in ``bytes_sent``), weighting each rank by the rows it processed since
the last average. Averaging the momentum too is what makes ``H = 1`` the synchronous SGD step (the mean of the
ranks' ``mu*v + g_i`` is ``mu*v`` plus the global mean gradient); without it the momentum of the ranks would drift
apart. The weights make it exact for uneven shards as well (a rank with no rows weighs nothing).

``after_epochs = E`` (``--local-steps-after``, post-local SGD) runs the first ``E`` epochs as the plain synchronous
trainer (:class:`~ring_allreduce.train.trainer.SynchronousStep`: gradients allreduced every step), then switches.
"""
from __future__ import annotations

import time

import numpy as np

from ..ps import layout


class LocalSGDStep:
    """``trainer.strategy``: local steps with periodic averaging (see the module docstring)."""

    name = "local_sgd"
    owns_update = True

    def __init__(self, local_steps: int, after_epochs: int = 0):
        if int(local_steps) < 1:
            raise ValueError(f"--local-steps must be >= 1, got {local_steps}")
        if int(after_epochs) < 0:
            raise ValueError(f"--local-steps-after must be >= 0, got {after_epochs}")
        self.H, self.after = int(local_steps), int(after_epochs)
        self._rows = 0  # rows this rank processed since the last average
        self._local = 0  # local steps since the last average
        self._since = np.zeros(layout.STATS, dtype=np.float64)  # local statistics since the last average
        self.averagings = 0
        self.sync_steps = 0

    def __call__(self, trainer, X, y, n_global):
        from ..train.trainer import StepResult, SynchronousStep

        opt, timer = trainer.optimizer, trainer.timer
        if trainer.epoch < self.after:
            res = SynchronousStep()(trainer, X, y, n_global)
            with timer.phase("update"):
                if res.rows:
                    opt.step(1.0 if res.rows == n_global else n_global / res.rows)
            self.sync_steps += 1
            return res
        rows = X.shape[0]
        with timer.phase("compute"):
            t0 = time.perf_counter()
            loss, correct = trainer.model.loss_and_grad(opt.params, X, y, opt.grad, 1.0 / n_global)
            trainer.after_backward(time.perf_counter() - t0)
        with timer.phase("update"):
            if rows:
                opt.step(n_global / rows)  # this rank's mean gradient
            else:
                opt.steps += 1  # the schedule advances on every rank alike
        stats = np.array([rows, loss, correct], dtype=np.float64)
        self._rows += rows
        self._local += 1
        per_epoch = layout.steps_per_epoch(len(trainer.task.train), trainer.batch_size)
        sync = layout.is_sync_step(trainer.global_step, per_epoch, trainer.checkpoint_every, trainer.max_steps)
        if self._local < self.H and not sync:
            self._since += stats
            return StepResult(rows, float(loss), int(correct), None)
        total = self._average(trainer, self._since + stats)
        out, self._since = total - self._since, np.zeros_like(self._since)
        return StepResult(int(out[0]), float(out[1]), int(out[2]), None)

    def _average(self, trainer, stats) -> np.ndarray:
        """Average parameters and momentum (weighted by rows); return the summed statistics since the last one."""
        opt, timer = trainer.optimizer, trainer.timer
        with timer.phase("comm"):
            head = np.concatenate([[float(self._rows)], stats])
            opt.reduce_stats(head)
            weight = opt.params.dtype.type(self._rows / head[0])
            for arr in (opt.params, opt.velocity):
                np.multiply(arr, weight, out=opt.grad)
                opt.begin()
                opt.grad_ready(opt.grad.size)
                opt.synchronize()
                trainer.record_bucket_spans()
                arr[...] = opt.grad
        self._rows = self._local = 0
        self.averagings += 1
        return head[1:]

    def report(self, trainer) -> dict:
        opt = trainer.optimizer
        sizes = [b.stop - b.start for b in opt.buckets]
        p = trainer.size
        analytic = [layout.local_sgd_bytes(r, p, sizes, opt.params.dtype.itemsize, self.sync_steps, self.averagings,
                                    opt.algorithm) for r in range(p)]
        return {"local_steps": self.H, "after_epochs": self.after, "averagings": self.averagings,
                "synchronous_steps": self.sync_steps, "analytical_bytes": layout.known(analytic)}
