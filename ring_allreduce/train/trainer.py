"""The data-parallel training loop: global batches, sharding, the step strategy, phases, checkpoints.

**Step strategy** (``trainer.strategy``): ``strategy(trainer, X, y, n_global) -> StepResult``. It computes this
rank's gradient into ``trainer.optimizer.grad`` (rows ``X, y`` of the global batch, scaled by ``1 / n_global``),
exchanges it and returns the global statistics (rows that contributed, loss sum, correct count, contributors).
The trainer then rescales by ``n_global / rows`` when fewer rows than the global batch contributed and applies
the update. :class:`SynchronousStep` is the default; a replacement (backup workers) may also define
``state_dict()``/``load_state_dict()``, saved per rank in checkpoints. A strategy with ``owns_update = True``
(parameter server, local SGD) applies its own update inside the call; the trainer then only accounts the returned
statistics (``rows`` no longer scales an update).

**Callbacks** (``trainer.callbacks``): objects with any of ``on_train_begin(trainer)``,
``on_step_begin(trainer, step)``, ``after_backward(trainer, step, seconds)`` (inside the compute phase: a
straggler injector sleeps here), ``on_phase(trainer, step, name, t0, t1)`` (every timed phase, including each
bucket's hook call ``"comm:bucket<i>"`` from the communication thread, ``time.perf_counter`` seconds),
``on_step_end(trainer, step, result)``, ``on_epoch_end(trainer, epoch, record)``, ``on_train_end(trainer, result)``,
``before_params_read(trainer)`` (collective, every rank: the trainer is about to read the full parameter vector to
evaluate, checkpoint or digest it; a model-parallel strategy that updates only its stage's part assembles it here),
and optionally ``state_dict()``/``load_state_dict()`` plus a ``name`` (checkpointed per rank).

**Sharder** (``trainer.sharder``): ``sharder(global_batch, rank, size) -> indices`` replaces the equal contiguous
:func:`~.data.shard` of each global batch (load balancing gives faster ranks more rows; a pipeline gives each
replica its share); None keeps the default.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import time
from typing import List, NamedTuple, Optional

import numpy as np

from . import checkpoint as ckpt
from .data import batches, epoch_order, shard

FAULT_ENV = "RING_ALLREDUCE_FAULT"  # "RANK:STEP": that rank calls os._exit at the start of global step STEP


class StepResult(NamedTuple):
    rows: int  # rows that contributed to the averaged gradient, over all ranks
    loss_sum: float
    correct: int
    contributors: Optional[List[int]] = None  # ranks whose gradients are in the average (None: all)


class PhaseTimer:
    """Accumulate named phase durations and forward every phase to listeners ``fn(step, name, t0, t1)``."""

    def __init__(self):
        self.totals: dict = {}
        self.listeners: list = []
        self.step = 0

    @contextlib.contextmanager
    def phase(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.record(name, t0, time.perf_counter())

    def record(self, name: str, t0: float, t1: float, total: bool = True) -> None:
        if total:
            self.totals[name] = self.totals.get(name, 0.0) + (t1 - t0)
        for fn in self.listeners:
            fn(self.step, name, t0, t1)


class SynchronousStep:
    """Every rank computes its shard's gradient, buckets are exchanged during backward, stats summed after."""

    name = "sync"

    def __call__(self, trainer, X, y, n_global) -> StepResult:
        opt, timer = trainer.optimizer, trainer.timer
        opt.begin()
        with timer.phase("compute"):
            t0 = time.perf_counter()
            loss, correct = trainer.model.loss_and_grad(opt.params, X, y, opt.grad, 1.0 / n_global,
                                                        on_ready=opt.grad_ready)
            trainer.after_backward(time.perf_counter() - t0)
        with timer.phase("comm"):
            opt.synchronize()
            stats = opt.reduce_stats(np.array([X.shape[0], loss, correct], dtype=np.float64))
        trainer.record_bucket_spans()
        return StepResult(int(stats[0]), float(stats[1]), int(stats[2]), None)


def digest(a) -> str:
    """sha256 of an array's bytes (device arrays are copied to the host first)."""
    a = a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else a
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


class Trainer:
    """Train ``model`` on ``task`` with ``optimizer`` over ``comm``; see the module docstring for the hooks."""

    def __init__(self, comm, task, model, optimizer, *, batch_size: int, epochs: int, seed: int = 0,
                 checkpoint_dir: Optional[str] = None, checkpoint_every: int = 0, max_steps: int = 0,
                 log=None, config: Optional[dict] = None, strategy=None, callbacks=()):
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.task, self.model, self.optimizer = task, model, optimizer
        self.batch_size, self.epochs, self.seed = int(batch_size), int(epochs), int(seed)
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        self.checkpoint_dir, self.checkpoint_every = checkpoint_dir, int(checkpoint_every)
        self.max_steps = int(max_steps)
        self.log = log if log is not None else (print if self.rank == 0 else (lambda *a, **k: None))
        self.config = dict(config or {})
        self.strategy = strategy or SynchronousStep()
        self.callbacks = list(callbacks)
        self.timer = PhaseTimer()
        self.timer.listeners.append(self._phase_to_callbacks)
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.history: list = []
        self._acc = self._zero_acc()
        self._fault = self._parse_fault()
        self._final = None  # test loss/accuracy when max_steps stops training inside an epoch
        #: extra per-epoch console fields: "bytes" (wire bytes per step and ratio to an fp32 ring allreduce, for
        #: compression), "contributors" (ranks per step and dropped gradients, for backup workers / stragglers)
        self.console_extras: set = set()
        self._bytes0 = 0
        self.xp = model.xp
        self.sharder = None  # see the module docstring: None = equal contiguous shards

    # -- callbacks ------------------------------------------------------------------------------------------------
    def _call(self, method: str, *args) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, method, None)
            if fn is not None:
                fn(self, *args)

    def _phase_to_callbacks(self, step, name, t0, t1) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, "on_phase", None)
            if fn is not None:
                fn(self, step, name, t0, t1)

    def after_backward(self, seconds: float) -> None:
        """Called by the step strategy inside the compute phase, right after backward."""
        self._call("after_backward", self.global_step, seconds)

    def record_bucket_spans(self) -> None:
        """Report the communication spans of the last exchange (``comm:bucket<i>``) to the timer's listeners."""
        for i, t0, t1 in self.optimizer.exchange.spans:
            self.timer.totals["comm_busy"] = self.timer.totals.get("comm_busy", 0.0) + (t1 - t0)
            self.timer.record(f"comm:bucket{i}", t0, t1, total=False)

    # -- the loop -----------------------------------------------------------------------------------------------
    @staticmethod
    def _zero_acc() -> dict:
        return {"rows": 0, "loss_sum": 0.0, "correct": 0, "steps": 0, "contributions": 0}

    def _parse_fault(self):
        spec = os.environ.get(FAULT_ENV)
        if not spec:
            return None
        r, s = spec.split(":")
        return int(s) if int(r) == self.rank else None

    def _to_device(self, a):
        return a if self.xp is np else self.xp.asarray(a)

    def train_step(self, global_batch: np.ndarray) -> StepResult:
        """One synchronous step on ``global_batch`` (indices into the training set, identical on every rank)."""
        idx = (self.sharder or shard)(global_batch, self.rank, self.size)
        X, y = self.task.train.take(idx)
        X, y = self._to_device(X), self._to_device(y)
        self.timer.step = self.global_step
        self._call("on_step_begin", self.global_step)
        n_global = len(global_batch)
        res = self.strategy(self, X, y, n_global)
        with self.timer.phase("update"):
            if res.rows == 0:
                scale = 0.0
            else:
                scale = 1.0 if res.rows == n_global else n_global / res.rows
            if scale and not getattr(self.strategy, "owns_update", False):
                self.optimizer.step(scale)
        self._call("on_step_end", self.global_step, res)
        return res

    def fit(self) -> dict:
        """Train until ``epochs`` (or ``max_steps``) and return the result dictionary (same on every rank)."""
        self.check_agreement()
        self._call("on_train_begin")
        t_start = time.perf_counter()
        spans = []  # per epoch (or partial epoch) of this session: (seconds, samples, comm s, comm busy s)
        n = len(self.task.train)
        stop = False
        while self.epoch < self.epochs and not stop:
            bl = batches(epoch_order(self.seed, self.epoch, n), self.batch_size)
            t_epoch = time.perf_counter()
            comm0 = self.timer.totals.get("comm", 0.0)
            busy0 = self.timer.totals.get("comm_busy", 0.0)
            ck0 = self.timer.totals.get("checkpoint", 0.0)
            epoch_samples = 0
            self._bytes0 = self.optimizer.comm.bytes_sent
            while self.step_in_epoch < len(bl):
                if self._fault is not None and self.global_step == self._fault:
                    os._exit(86)  # fault injection for the resume test: die without cleanup, mid-epoch
                res = self.train_step(bl[self.step_in_epoch])
                epoch_samples += len(bl[self.step_in_epoch])
                a = self._acc
                a["rows"] += res.rows
                a["loss_sum"] += res.loss_sum
                a["correct"] += res.correct
                a["steps"] += 1
                a["contributions"] = a.get("contributions", 0) + (
                    self.size if res.contributors is None else len(res.contributors))
                self.step_in_epoch += 1
                self.global_step += 1
                if self.checkpoint_every and self.global_step % self.checkpoint_every == 0:
                    with self.timer.phase("checkpoint"):
                        self.save_checkpoint()
                if self.max_steps and self.global_step >= self.max_steps:
                    stop = True
                    break
            # throughput counts training only: checkpoint writes are timed apart
            dt = time.perf_counter() - t_epoch - (self.timer.totals.get("checkpoint", 0.0) - ck0)
            comm_s = self.timer.totals.get("comm", 0.0) - comm0
            spans.append((dt, epoch_samples, comm_s, self.timer.totals.get("comm_busy", 0.0) - busy0))
            if self.step_in_epoch >= len(bl):
                self._end_epoch(dt, epoch_samples, comm_s)
            elif stop:
                self._stop_mid_epoch(dt, epoch_samples, len(bl))
        result = self._result(spans, time.perf_counter() - t_start)
        self.optimizer.close()
        self._call("on_train_end", result)
        return result

    def _end_epoch(self, dt: float, samples: int, comm_s: float) -> None:
        a = self._acc
        test_loss, test_acc = self.evaluate()
        rec = {"epoch": self.epoch + 1, "loss": a["loss_sum"] / max(a["rows"], 1),
               "train_accuracy": a["correct"] / max(a["rows"], 1) if self.task.kind == "classification" else None,
               "test_loss": test_loss, "test_accuracy": test_acc,
               "samples_per_s": samples / dt if dt > 0 else None, "comm_fraction": comm_s / dt if dt > 0 else None,
               "time_s": dt}
        self.history.append(rec)
        acc = "" if test_acc is None else f"  test acc {100 * test_acc:6.2f}%"
        self.log(f"epoch {rec['epoch']:3d}/{self.epochs}  loss {rec['loss']:.4f}{acc}  test loss {test_loss:.4f}"
                 f"  {rec['samples_per_s']:,.0f} samples/s  comm {100 * rec['comm_fraction']:.1f}%"
                 + self._console_extras(), flush=True)
        self._call("on_epoch_end", self.epoch, rec)
        self.epoch += 1
        self.step_in_epoch = 0
        self._acc = self._zero_acc()
        if self.checkpoint_dir:
            with self.timer.phase("checkpoint"):
                self.save_checkpoint()

    def _console_extras(self) -> str:
        """The per-epoch fields asked for in ``console_extras`` (rank 0's bytes; contributions are global)."""
        a, out = self._acc, ""
        steps = max(a["steps"], 1)
        if "bytes" in self.console_extras:
            per_step = (self.optimizer.comm.bytes_sent - self._bytes0) / steps
            # what the uncompressed ring sends per rank and step: 2 (p - 1) / p of the gradient
            ring = 2 * (self.size - 1) / self.size * self.model.n_params * np.dtype(self.model.dtype).itemsize
            ratio = f" ({ring / per_step:.1f}x less than the plain ring)" if per_step > 0 and ring > 0 else ""
            out += f"  sent {per_step / 1024:,.1f} KiB/step{ratio}"
        if "contributors" in self.console_extras:
            mean = a.get("contributions", 0) / steps
            dropped = self.size * a["steps"] - a.get("contributions", 0)
            out += f"  contributors {mean:.2f}/{self.size} per step, {dropped} gradient(s) dropped"
        return out

    def _stop_mid_epoch(self, dt: float, samples: int, steps_in_epoch: int) -> None:
        """``max_steps`` ended training inside an epoch: evaluate the final parameters and say where it stopped."""
        a = self._acc
        test_loss, test_acc = self.evaluate()
        self._final = {"test_loss": test_loss, "test_accuracy": test_acc}
        acc = "" if test_acc is None else f"  test acc {100 * test_acc:6.2f}%"
        rate = f"  {samples / dt:,.0f} samples/s" if dt > 0 and samples else ""
        self.log(f"stopped at step {self.global_step} (--max-steps), epoch {self.epoch + 1} step "
                 f"{self.step_in_epoch}/{steps_in_epoch}  loss {a['loss_sum'] / max(a['rows'], 1):.4f}{acc}"
                 f"  test loss {test_loss:.4f}{rate}", flush=True)

    def evaluate(self):
        """Mean test loss and accuracy (None for regression), each rank evaluating a contiguous share."""
        from mpi4py import MPI

        self._call("before_params_read")
        test = self.task.test
        idx = shard(np.arange(len(test)), self.rank, self.size)
        X, y = test.take(idx)
        loss, correct = self.model.evaluate(self.optimizer.params, self._to_device(X), self._to_device(y))
        buf = np.array([loss, correct, len(idx)], dtype=np.float64)
        self.comm.Allreduce(MPI.IN_PLACE, buf, MPI.SUM)
        rows = max(buf[2], 1.0)
        return float(buf[0] / rows), (float(buf[1] / rows) if self.task.kind == "classification" else None)

    def _result(self, spans: list, wall: float) -> dict:
        self._call("before_params_read")
        t = self.timer.totals
        opt = self.optimizer
        # the first epoch of a process includes JIT compilation and data generation: rates leave it out when
        # there is more than one (as benchmarks exclude warm-up)
        timed = spans[1:] if len(spans) > 1 else spans
        train_time, samples = sum(x[0] for x in timed), sum(x[1] for x in timed)
        comm_s, busy_s = sum(x[2] for x in timed), sum(x[3] for x in timed)
        per_rank = self.comm.allgather({"bytes_sent": opt.comm.bytes_sent, "messages": opt.comm.messages,
                                        "collective_bytes": opt.comm.collective_bytes, "digest": digest(opt.params)})
        last = self.history[-1] if self.history else {}
        if self._final is not None:  # stopped inside an epoch: the evaluation of the final parameters
            last = self._final
        return {
            "p": self.size, "config": self.config, "history": self.history, "epochs_done": self.epoch,
            "steps": self.global_step,
            "test_accuracy": last.get("test_accuracy"), "test_loss": last.get("test_loss"),
            "samples_per_s": samples / train_time if train_time > 0 else None,
            "comm_fraction": comm_s / train_time if train_time > 0 else None,
            "comm_busy_fraction": busy_s / train_time if train_time > 0 else None,
            "rates_exclude_first_epoch": len(spans) > 1,
            "phase_seconds": dict(t), "train_time_s": sum(x[0] for x in spans), "wall_time_s": wall,
            "bytes_sent": [r["bytes_sent"] for r in per_rank], "messages": [r["messages"] for r in per_rank],
            "collective_bytes": [r["collective_bytes"] for r in per_rank],
            "param_digests": [r["digest"] for r in per_rank],
            "params_identical": len({r["digest"] for r in per_rank}) == 1,
        }

    # -- checkpoints -------------------------------------------------------------------------------------------
    def _components(self):
        comps = [("hook", self.optimizer.hook_state), ("strategy", self.strategy)]
        comps += [(f"cb.{getattr(cb, 'name', type(cb).__name__)}", cb) for cb in self.callbacks]
        return [(n, c) for n, c in comps if hasattr(c, "state_dict") and hasattr(c, "load_state_dict")]

    def check_agreement(self) -> None:
        """Raise the same error on every rank unless all ranks run the same configuration and parameter layout."""
        import json

        from ..errors import MismatchError

        text = json.dumps({"config": self.config, "model": self.model.describe(), "batch": self.batch_size,
                           "buckets": [(b.start, b.stop) for b in self.optimizer.buckets]}, sort_keys=True)
        mine = hashlib.sha256(text.encode()).hexdigest()
        everyone = self.comm.allgather(mine)
        bad = [r for r, h in enumerate(everyone) if h != everyone[0]]
        if bad:
            raise MismatchError(f"ranks {bad} run a different training configuration from rank 0 "
                                "(flags, model or bucket layout); every rank must get the same command line")

    def save_checkpoint(self) -> None:
        """Rank 0 writes params, momentum, every rank's component states and the loop position (atomically)."""
        self._call("before_params_read")
        local = {}
        for name, comp in self._components():
            local.update(ckpt.flatten_state(f"{name}.r{self.rank}.", comp.state_dict()))
        gathered = self.comm.gather(local, root=0)
        if self.rank == 0:
            arrays = {"params": _host(self.optimizer.params), "velocity": _host(self.optimizer.velocity),
                      "order": epoch_order(self.seed, self.epoch, len(self.task.train))}
            for d in gathered:
                arrays.update(d)
            meta = {"format": 1, "p": self.size, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                    "global_step": self.global_step, "optimizer_steps": self.optimizer.steps, "acc": self._acc,
                    "history": self.history, "seed": self.seed, "batch_size": self.batch_size,
                    "model": self.model.describe(), "config": self.config}
            ckpt.save(ckpt.path_in(self.checkpoint_dir), arrays, meta)
        self.comm.Barrier()  # nobody runs ahead (and may be killed) before the file is complete

    def load_checkpoint(self, directory: str) -> bool:
        """Restore from ``directory`` (any p); False when there is no checkpoint there. Every rank must call."""
        path = ckpt.path_in(directory)
        found = os.path.exists(path) if self.rank == 0 else None
        found = self.comm.bcast(found, root=0)
        if not found:
            return False
        arrays, meta = ckpt.load(path) if self.rank == 0 else (None, None)
        meta = self.comm.bcast(meta, root=0)
        bad = [k for k, v in (("seed", self.seed), ("batch_size", self.batch_size),
                              ("model", self.model.describe())) if meta[k] != v]
        if bad:
            raise ValueError(f"checkpoint in {directory} was written with different {', '.join(bad)}: "
                             + "; ".join(f"{k}: {meta[k]!r}" for k in bad))
        order = epoch_order(self.seed, meta["epoch"], len(self.task.train))
        if self.rank == 0 and not np.array_equal(arrays["order"], order):
            bad.append("data order")  # e.g. another NumPy whose permutation differs: resuming would not be exact
        bad = self.comm.bcast(bad, root=0)
        if bad:
            raise ValueError(f"checkpoint in {directory}: the data order of epoch {meta['epoch'] + 1} cannot be "
                             "reproduced here (different NumPy random streams?); resuming would not be exact")
        params = np.empty(self.optimizer.params.size, dtype=self.model.dtype)
        velocity = np.empty_like(params)
        if self.rank == 0:
            params[...], velocity[...] = arrays["params"], arrays["velocity"]
        self.comm.Bcast(params, root=0)
        self.comm.Bcast(velocity, root=0)
        self.optimizer.params[...] = self._to_device(params)
        self.optimizer.load_state_dict({"velocity": self._to_device(velocity), "steps": meta["optimizer_steps"]})
        same_p = meta["p"] == self.size
        parts = None
        if self.rank == 0 and same_p:
            parts = [{k: v for k, v in arrays.items() if f".r{r}." in k} for r in range(self.size)]
        mine = self.comm.scatter(parts, root=0) if same_p else {}
        for name, comp in self._components():
            d = ckpt.unflatten_state(f"{name}.r{self.rank}.", mine)
            if d:
                comp.load_state_dict(d)
        if not same_p:
            self.log(f"note: checkpoint was written with p={meta['p']}; per-rank hook/strategy state is reset")
        self.epoch, self.step_in_epoch = meta["epoch"], meta["step_in_epoch"]
        self.global_step, self.history, self._acc = meta["global_step"], meta["history"], meta["acc"]
        return True


def _host(a) -> np.ndarray:
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)
