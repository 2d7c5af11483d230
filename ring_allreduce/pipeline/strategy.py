"""``PipelineStep``: a step strategy running the MLP as ``S`` pipeline stages times ``R`` data-parallel replicas.

Rank ``r`` is stage ``r % S`` of replica ``r // S``. Two sub-communicators are split once, at construction: the
replica's pipeline (its ``S`` stages, in stage order) and the stage's data-parallel group (the ``R`` ranks holding
the same layers). A step:

1. the replica takes its contiguous share of the global batch (``trainer.sharder``) and cuts it into ``M``
   contiguous micro-batches;
2. every receive of the step is posted first (``Irecv`` into per-micro-batch preallocated buffers): activations
   from the stage before, output gradients from the stage after; the stage then works through its schedule
   (:func:`~.partition.schedule`: GPipe or 1F1B), waiting only for the receive it needs next and sending each
   result with ``Isend`` as soon as it exists;
3. the stage's gradient slice (pre-scaled by ``1 / rows in the global batch``, so sums are means) is summed over
   the ``R`` replicas with the hand-written allreduce (:func:`~ring_allreduce.train.hooks.reduce_sum`, ``--algorithm``)
   on the data-parallel sub-communicator; loss, correct and rows are summed over all ranks;
4. the SGD update is applied to the stage's slice only (``optimizer.step(span=...)``: element-wise, so equal to the
   full update restricted to the slice).

The other stages' parts of a rank's parameter vector go stale; :meth:`before_params_read` (called by the trainer
before evaluating, checkpointing or digesting) gathers every stage's slice of parameters and momentum into every
rank's full vectors (``Allgatherv`` over the pipeline communicator). A checkpoint therefore holds the full
parameter vector: it resumes at any layout (another ``S``, ``R`` or plain data parallelism).

Per step each stage measures its busy time (forward and backward arithmetic) against the schedule's wall time;
the idle remainder is the bubble, reported next to GPipe's ``(S - 1) / (M + S - 1)``. Every micro-batch's forward
and backward is a timed phase (``forward:mb<m>``, ``backward:mb<m>``), so the Chrome trace (``--timeline``)
shows each stage's lane.
"""
from __future__ import annotations

import time

import numpy as np

from ..schedules import chunk_bounds
from ..train.hooks import reduce_sum
from ..train.trainer import StepResult
from ..train.transport import CountingComm
from .partition import bubble_formula, flat_span, layer_costs, partition, schedule
from .stage import Stage


class PipelineStep:
    """The strategy (``owns_update``) and a callback (``before_params_read``, ``on_train_begin``)."""

    name = "pipeline"
    owns_update = True

    def __init__(self, trainer, stages: int, micro: int, schedule_name: str = "gpipe"):
        comm, model = trainer.comm, trainer.model
        p, rank = comm.Get_size(), comm.Get_rank()
        self.S, self.M, self.R = int(stages), int(micro), p // int(stages)
        self.schedule_name = schedule_name
        self.stage, self.replica = rank % self.S, rank // self.S
        # counted, as the trainer's own communicator: bytes_sent per rank in the report
        self.pipe = CountingComm(comm.Split(self.replica, self.stage))  # rank in pipe == stage
        self.dp = CountingComm(comm.Split(self.stage, self.replica))
        self.layers = partition(layer_costs(model.sizes), self.S)
        self.spans = [flat_span(model, lr) for lr in self.layers]
        self.span = self.spans[self.stage]
        self.algorithm = trainer.optimizer.algorithm
        rows = -(-(-(-trainer.batch_size // self.R)) // self.M)  # ceil(ceil(B / R) / M)
        self.work = Stage(model, self.layers[self.stage], self.M, max(rows, 1))
        self.order = schedule(schedule_name, self.stage, self.S, self.M)
        self._stats = np.empty(3, dtype=np.float64)
        self._reqs: list = []
        self.busy_s, self.wall_s, self.steps_timed = 0.0, 0.0, 0
        self._first = True
        trainer.sharder = self.shard

    # -- data ---------------------------------------------------------------------------------------------------
    def shard(self, global_batch, rank: int, size: int):
        """This replica's contiguous share of the global batch (the same rows on each of its stages)."""
        b = chunk_bounds(len(global_batch), self.R)
        return global_batch[b[self.replica]:b[self.replica + 1]]

    # -- one step -----------------------------------------------------------------------------------------------
    def __call__(self, trainer, X, y, n_global) -> StepResult:
        opt, timer, st = trainer.optimizer, trainer.timer, self.work
        mb = chunk_bounds(X.shape[0], self.M)
        n = [int(mb[m + 1] - mb[m]) for m in range(self.M)]
        prev, nxt = self.stage - 1, self.stage + 1
        recv_x, recv_g = {}, {}
        with timer.phase("compute"):
            t_start = time.perf_counter()
            st.begin()
            for m in range(self.M):  # every receive of the step, posted before any work
                if not st.first:
                    recv_x[m] = self.pipe.Irecv(st.x_in[m][:n[m]], source=prev, tag=m)
                if not st.last:
                    recv_g[m] = self.pipe.Irecv(st.g_out[m][:n[m]], source=nxt, tag=self.M + m)
            sends, loss, correct, busy = [], 0.0, 0, 0.0
            for kind, m in self.order:
                if kind == "F":
                    if st.first:
                        x = X[mb[m]:mb[m + 1]]
                    else:
                        recv_x[m].Wait()
                        x = st.x_in[m][:n[m]]
                    t0 = time.perf_counter()
                    out = st.forward(opt.params, m, x)
                    if st.last:
                        lo, co = st.loss(m, n[m], y[mb[m]:mb[m + 1]], 1.0 / n_global)
                        loss, correct = loss + lo, correct + co
                    t1 = time.perf_counter()
                    if not st.last:
                        sends.append(self.pipe.Isend(out, dest=nxt, tag=m))
                    timer.record(f"forward:mb{m}", t0, t1, total=False)
                else:
                    if not st.last:
                        recv_g[m].Wait()
                    x = X[mb[m]:mb[m + 1]] if st.first else st.x_in[m][:n[m]]
                    t0 = time.perf_counter()
                    g_in = st.backward(opt.params, opt.grad, m, x, n[m])
                    t1 = time.perf_counter()
                    if g_in is not None:
                        sends.append(self.pipe.Isend(g_in, dest=prev, tag=self.M + m))
                    timer.record(f"backward:mb{m}", t0, t1, total=False)
                busy += t1 - t0
            from mpi4py import MPI

            MPI.Request.Waitall(sends)
            wall = time.perf_counter() - t_start
            trainer.after_backward(busy)
        if not self._first:  # the first step includes allocation and warm-up: left out of the bubble
            self.busy_s, self.wall_s, self.steps_timed = self.busy_s + busy, self.wall_s + wall, self.steps_timed + 1
        self._first = False
        with timer.phase("comm"):
            reduce_sum(self.dp, opt.grad[self.span], self.algorithm)
            s = self._stats
            s[0] = X.shape[0] if st.first else 0
            s[1], s[2] = (loss, correct) if st.last else (0.0, 0.0)
            opt.reduce_stats(s)
        with timer.phase("update"):
            if s[0] > 0:
                opt.step(n_global / s[0], span=self.span)
        return StepResult(int(s[0]), float(s[1]), int(s[2]), None)

    # -- callbacks ----------------------------------------------------------------------------------------------
    def on_train_begin(self, trainer):
        for cb in trainer.callbacks:
            hb = getattr(cb, "hb", None) if getattr(cb, "name", None) == "heartbeat" else None
            if hb is not None:
                hb.roles = {r: f"pipeline stage {r % self.S} (layers {self.layers[r % self.S][0]}.."
                               f"{self.layers[r % self.S][1] - 1}) of replica {r // self.S}"
                            for r in range(trainer.size)}

    def before_params_read(self, trainer):
        """Assemble every stage's slice of parameters and momentum into every rank's full vectors (collective)."""
        from mpi4py import MPI
        from mpi4py.util.dtlib import from_numpy_dtype

        if self.S == 1:
            return
        counts = [s.stop - s.start for s in self.spans]
        displs = [s.start for s in self.spans]
        opt = trainer.optimizer
        for a in (opt.params, opt.velocity):
            self.pipe.comm.Allgatherv(MPI.IN_PLACE, [a, counts, displs, from_numpy_dtype(a.dtype)])

    # -- report -------------------------------------------------------------------------------------------------
    def report(self, trainer) -> dict:
        """Layout, and per stage the measured bubble (idle share of the schedule's wall time) next to GPipe's."""
        per = trainer.comm.allgather((self.stage, self.replica, self.busy_s, self.wall_s, self.steps_timed,
                                      self.pipe.bytes_sent, self.dp.bytes_sent))
        stages = []
        for s in range(self.S):
            mine = [x for x in per if x[0] == s]
            busy, wall = sum(x[2] for x in mine), sum(x[3] for x in mine)
            span = self.spans[s]
            stages.append({"stage": s, "layers": list(self.layers[s]), "params": span.stop - span.start,
                           "busy_s": busy, "wall_s": wall, "bubble_fraction": 1 - busy / wall if wall > 0 else None})
        fr = [x["bubble_fraction"] for x in stages if x["bubble_fraction"] is not None]
        return {"stages": self.S, "replicas": self.R, "micro_batches": self.M, "schedule": self.schedule_name,
                "steps_timed": per[0][4], "per_stage": stages,
                "activation_bytes": [x[5] for x in per], "allreduce_bytes": [x[6] for x in per],
                "bubble_fraction": float(np.mean(fr)) if fr else None,
                "bubble_formula": bubble_formula(self.S, self.M)}
