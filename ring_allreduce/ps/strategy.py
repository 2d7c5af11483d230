"""The parameter-server step strategy (``--mode ps``): servers own parameter shards, workers push and pull.

Ranks ``0 .. S-1`` are servers, ``S .. p-1`` the ``W = p - S`` workers. Server ``s`` owns ``[lo_s, hi_s)`` of the
flat parameter vector and of the momentum (:func:`~.layout.shard_bounds`) and is the only rank that updates it.
Each step a worker computes the gradient of its share of the global batch (the batch is split over the workers
only), pushes shard ``s`` of it to server ``s`` and pulls shard ``s`` of the parameters back: one ``Isend`` and one
``Irecv`` per shard per direction, on preallocated buffers (views of the optimizer's arrays), on a duplicated
communicator so they never match other traffic. A server counts the pushes of each worker (its *clock*; MPI keeps
the messages of one sender in order, so no header is needed) and:

* ``bsp``: waits until every worker's gradient for the clock has arrived, sums them in worker order (fixed, so the
  run is deterministic), applies one optimizer step to its shard (:meth:`DistributedOptimizer.step` with ``span``:
  the same kernel as the allreduce trainer's update) and sends the shard to every worker;
* ``ssp`` (staleness ``s``) and ``asp``: applies each gradient as it arrives (one optimizer step with the worker's
  share of the gradient and ``1/W`` of the weight decay, at the learning rate of the worker's clock) and answers a
  worker at clock ``c`` once the slowest worker's clock is ``>= c - s`` (``asp``: at once). Each answer records the
  gap ``c - min clock`` (the staleness observed; never above ``s`` for ``ssp``).

A worker waits for its answer before computing its next step. Synchronisation steps (the end of an epoch, a
checkpoint, the last step: :func:`~.layout.is_sync_step`) get no answer: there every server, once every worker's
gradient for that step is applied, sends its parameter *and* momentum shards to every other rank, and the step
statistics are summed over all ranks, so evaluation, checkpoints (rank 0 writes the full parameters and momentum:
the server state) and the result see the same full state on every rank. A resumed run restarts every clock at the
checkpoint's step.
"""
from __future__ import annotations

import time
from typing import List, Optional

import numpy as np

from ..resilience.stall import wait as poll_wait
from . import layout

TAG_PUSH, TAG_PULL, TAG_SYNC_W, TAG_SYNC_V = 0x5A1, 0x5A2, 0x5A3, 0x5A4
_MAX_SLEEP = 2e-4  # polls back off to this: waiting ranks must not starve an oversubscribed neighbour


class ParameterServerStep:
    """``trainer.strategy`` *and* a callback (append it to ``trainer.callbacks`` too); see the module docstring."""

    name = "ps"
    owns_update = True

    def __init__(self, servers: int, consistency: str = "bsp", staleness: int = 0):
        if consistency not in layout.CONSISTENCY:
            raise ValueError(f"consistency must be one of {', '.join(layout.CONSISTENCY)}, got {consistency!r}")
        if int(servers) < 1:
            raise ValueError(f"--servers must be >= 1, got {servers}")
        if int(staleness) < 0:
            raise ValueError(f"--staleness must be >= 0, got {staleness}")
        self.S, self.consistency, self.s = int(servers), consistency, int(staleness)
        self.chan = None
        self.gaps: List[int] = []  # server: clock gap of every answer
        self.starts: List[tuple] = []  # worker: (clock, monotonic time it began computing that step)
        self.pushes: List[tuple] = []  # worker: (clock, monotonic time its push for that clock was posted)
        self.wait_s = 0.0
        self.syncs = 0

    # -- set-up ----------------------------------------------------------------------------------------------
    def on_train_begin(self, trainer):
        from ..train.transport import CountingComm

        p, rank, opt = trainer.size, trainer.rank, trainer.optimizer
        if not self.S < p:
            raise ValueError(f"--mode ps needs at least one worker: --servers {self.S} with p={p}")
        if trainer.model.xp is not np:
            raise ValueError("--mode ps moves host (NumPy) arrays; GPU models are not supported")
        self.p, self.rank, self.W = p, rank, p - self.S
        self.chan = CountingComm(trainer.comm.Dup())  # collective: every rank runs on_train_begin
        self.bounds = layout.shard_bounds(opt.params.size, self.S)
        self.per_epoch = layout.steps_per_epoch(len(trainer.task.train), trainer.batch_size)
        self.first_step = trainer.global_step
        self._since = np.zeros(layout.STATS, dtype=np.float64)  # local statistics since the last sync
        self._order = (None, None)
        if self.is_server:
            lo, hi = self.bounds[rank], self.bounds[rank + 1]
            self.span = slice(lo, hi)
            self.rbufs = [np.empty(hi - lo, dtype=opt.params.dtype) for _ in range(self.W)]
            self.sbufs = [np.empty(hi - lo, dtype=opt.params.dtype) for _ in range(self.W)]
            self.clocks = [trainer.global_step] * self.W  # pushes received per worker
            self.replied = list(self.clocks)
            self.sends: List[Optional[object]] = [None] * self.W
            self.recvs = [self._post_recv(w) for w in range(self.W)]

    @property
    def is_server(self) -> bool:
        return self.rank < self.S

    def _post_recv(self, w):
        return self.chan.Irecv(self.rbufs[w], self.S + w, TAG_PUSH)

    def _sync_after(self, trainer, step: int) -> bool:
        return layout.is_sync_step(step, self.per_epoch, trainer.checkpoint_every, trainer.max_steps)

    def _wait(self, reqs) -> None:
        self.wait_s += poll_wait(reqs, max_sleep=_MAX_SLEEP)

    # -- the step --------------------------------------------------------------------------------------------
    def __call__(self, trainer, X, y, n_global):
        from ..train.trainer import StepResult

        step = trainer.global_step
        sync = self._sync_after(trainer, step)
        if self.is_server:
            stats = np.zeros(layout.STATS)
            (self._serve_bsp if self.consistency == "bsp" else self._serve_async)(trainer, step, sync)
        else:
            stats = self._work(trainer, step, sync)
        opt = trainer.optimizer
        if sync:
            stats = self._sync(trainer, step, stats)
        else:
            self._since += stats
        opt.comm.bytes_sent += self.chan.bytes_sent  # into the trainer's counters (bytes_sent in the result)
        opt.comm.messages += self.chan.messages
        self.chan.reset()
        return StepResult(int(stats[0]), float(stats[1]), int(stats[2]), None)

    def _batch(self, trainer):
        """This worker's rows of the current global batch (the batch is split over the W workers)."""
        from ..train.data import epoch_order, shard

        if self._order[0] != trainer.epoch:
            self._order = (trainer.epoch, epoch_order(trainer.seed, trainer.epoch, len(trainer.task.train)))
        bs = trainer.batch_size
        gb = self._order[1][trainer.step_in_epoch * bs:(trainer.step_in_epoch + 1) * bs]
        return trainer.task.train.take(shard(gb, self.rank - self.S, self.W)), len(gb)

    def _work(self, trainer, step, sync) -> np.ndarray:
        opt, timer, S, b = trainer.optimizer, trainer.timer, self.S, self.bounds
        (X, y), n_global = self._batch(trainer)
        self.starts.append((step, time.monotonic()))
        with timer.phase("compute"):
            t0 = time.perf_counter()
            loss, correct = trainer.model.loss_and_grad(opt.params, X, y, opt.grad, 1.0 / n_global)
            trainer.after_backward(time.perf_counter() - t0)  # a straggler sleeps here, before its push
        with timer.phase("comm"):
            self.pushes.append((step, time.monotonic()))
            reqs = [self.chan.Isend(opt.grad[b[s]:b[s + 1]], s, TAG_PUSH) for s in range(S)]
            if not sync:  # pulled straight into the parameters: nobody reads them until the next step
                reqs += [self.chan.Irecv(opt.params[b[s]:b[s + 1]], s, TAG_PULL) for s in range(S)]
            self._wait(reqs)
        return np.array([X.shape[0], loss, correct], dtype=np.float64)

    def _serve_bsp(self, trainer, step, sync) -> None:
        opt, timer = trainer.optimizer, trainer.timer
        with timer.phase("wait"):
            self._wait(self.recvs + [s for s in self.sends if s is not None])
        with timer.phase("serve"):
            g = opt.grad[self.span]
            np.copyto(g, self.rbufs[0])
            for w in range(1, self.W):  # worker order, whatever the arrival order: a deterministic sum
                g += self.rbufs[w]
            self.recvs = [self._post_recv(w) for w in range(self.W)]
            opt.steps = step
            opt.step(1.0, span=self.span)
            self.clocks = [step + 1] * self.W
            if not sync:
                shard = opt.params[self.span]  # unchanged until every worker has it and pushed again
                self.sends = [self.chan.Isend(shard, self.S + w, TAG_PULL) for w in range(self.W)]
                self.replied = list(self.clocks)
                self.gaps += [0] * self.W

    def _serve_async(self, trainer, step, sync) -> None:
        """Apply pushes as they arrive until every worker has pushed ``step``; answer as the bound allows."""
        from mpi4py import MPI

        opt, timer = trainer.optimizer, trainer.timer
        g = opt.grad[self.span]
        pause = 2e-5
        while min(self.clocks) <= step:
            with timer.phase("wait"):
                t0 = time.monotonic()
                idx = MPI.Request.Testsome(self.recvs)
                while not idx:
                    time.sleep(pause)
                    pause = min(pause * 2, _MAX_SLEEP)
                    idx = MPI.Request.Testsome(self.recvs)
                self.wait_s += time.monotonic() - t0
            pause = 2e-5
            with timer.phase("serve"):
                for w in sorted(idx):
                    np.copyto(g, self.rbufs[w])
                    self.recvs[w] = self._post_recv(w)
                    opt.steps = self.clocks[w]  # the learning rate of the clock this gradient belongs to
                    opt.step(1.0, span=self.span, decay_scale=1.0 / self.W)
                    self.clocks[w] += 1
                self._answer(trainer)

    def _answer(self, trainer) -> None:
        params = trainer.optimizer.params[self.span]
        low = min(self.clocks)
        for w in range(self.W):
            c = self.clocks[w]
            if self.replied[w] >= c or self._sync_after(trainer, c - 1):
                continue
            if self.consistency == "ssp" and low < c - self.s:
                continue  # this worker is too far ahead of the slowest: it waits
            if self.sends[w] is not None:
                self.sends[w].Wait()  # done long ago: the worker had its last answer before pushing again
            np.copyto(self.sbufs[w], params)  # a copy: the shard keeps changing while the send is in flight
            self.sends[w] = self.chan.Isend(self.sbufs[w], self.S + w, TAG_PULL)
            self.replied[w] = c
            self.gaps.append(c - low)

    def _sync(self, trainer, step, stats) -> np.ndarray:
        """Give every rank the full parameters and momentum; return the statistics since the last sync minus what
        this rank already reported (so that the trainer's running totals become the job's totals)."""
        opt, b, S = trainer.optimizer, self.bounds, self.S
        with trainer.timer.phase("comm"):
            reqs = []
            for s in range(S):
                if s != self.rank:
                    reqs += [self.chan.Irecv(opt.params[b[s]:b[s + 1]], s, TAG_SYNC_W),
                             self.chan.Irecv(opt.velocity[b[s]:b[s + 1]], s, TAG_SYNC_V)]
            if self.is_server:
                if any(s is not None for s in self.sends):
                    reqs += [s for s in self.sends if s is not None]
                    self.sends = [None] * self.W
                for r in range(self.p):
                    if r != self.rank:
                        reqs += [self.chan.Isend(opt.params[self.span], r, TAG_SYNC_W),
                                 self.chan.Isend(opt.velocity[self.span], r, TAG_SYNC_V)]
                self.replied = list(self.clocks)
            self._wait(reqs)
            total = self._since + stats
            opt.reduce_stats(total)
        opt.steps = step + 1
        out, self._since = total - self._since, np.zeros_like(self._since)
        self.syncs += 1
        return out

    def on_train_end(self, trainer, result):
        if self.is_server:
            for r in self.recvs:  # the next clock's receives, never to be matched
                r.Cancel()
                r.Wait()
        if self.chan is not None:
            self.chan.comm.Free()

    # -- report ----------------------------------------------------------------------------------------------
    def report(self, trainer) -> dict:
        """Per-rank roles, answers' clock gaps and waits, and the analytical bytes next to the counted ones."""
        comm = trainer.comm
        gaps = np.bincount(np.asarray(self.gaps, dtype=np.int64)) if self.gaps else np.zeros(0, np.int64)
        mine = {"role": "server" if self.is_server else "worker", "wait_s": self.wait_s,
                "gap_hist": gaps.tolist()}
        every = comm.allgather(mine)
        hist = np.zeros(max(len(e["gap_hist"]) for e in every) or 1, dtype=np.int64)
        for e in every:
            hist[:len(e["gap_hist"])] += np.asarray(e["gap_hist"], dtype=np.int64)
        n_answers = int(hist.sum())
        steps = trainer.global_step - self.first_step
        itemsize = trainer.optimizer.params.dtype.itemsize
        analytic = [layout.ps_bytes(r, self.p, self.S, trainer.optimizer.params.size, itemsize, steps, self.syncs,
                                    trainer.optimizer.algorithm) for r in range(self.p)]
        return {"servers": self.S, "workers": self.W, "consistency": self.consistency,
                "staleness": self.s if self.consistency == "ssp" else None, "shards": self.bounds,
                "roles": [e["role"] for e in every], "wait_s": [e["wait_s"] for e in every],
                "clock_gap_hist": hist.tolist(), "clock_gap_max": int(np.nonzero(hist)[0].max()) if n_answers else 0,
                "clock_gap_mean": float((hist * np.arange(hist.size)).sum() / n_answers) if n_answers else 0.0,
                "answers": n_answers, "steps": steps, "sync_steps": self.syncs,
                "analytical_bytes": layout.known(analytic)}
