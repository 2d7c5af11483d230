"""``ring-allreduce train``: data-parallel SGD on the hand-written allreduce (run under mpiexec).

The ``--json`` result (identical on every rank, written by rank 0) holds ``history`` (per epoch: ``loss`` (mean
training loss over the epoch's rows), ``train_accuracy``, ``test_loss``, ``test_accuracy``, ``samples_per_s``,
``comm_fraction``, ``time_s``), the final ``test_accuracy`` (None for regression) and ``test_loss``,
``samples_per_s`` (training rows per second of step time, evaluation and checkpoints excluded; with more than
one epoch the first, which includes JIT compilation and data generation, is left out of this and the fractions),
``comm_fraction`` (share of step time the main thread spends in the exchange after backward: the communication
*not* hidden behind compute), ``comm_busy_fraction`` (share of step time during which a bucket's hook call was in
flight, overlapped or not), ``bytes_sent`` and ``messages`` per rank (payload bytes this rank handed to MPI's send
calls, counted by :class:`~ring_allreduce.train.transport.CountingComm`; ``collective_bytes``: buffers handed
to native MPI collectives, e.g. with ``--algorithm mpi``, whose wire traffic Python cannot see),
``param_digests`` (sha256 of every rank's final parameters) and ``params_identical``.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import types

import numpy as np

from .._io import write_json
from .buckets import OVERLAP_MODES

# measured on digits, 10 seeds at p=1: test accuracy 97.21-98.61% (mean 97.69%), about 2 s at p=2
DEFAULTS = {"epochs": 20, "batch_size": 32, "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "hidden": "256"}


def build_parser(plugin_mods=()) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ring-allreduce train", description=__doc__.splitlines()[0].strip('"'),
                                 epilog="example: mpiexec -n 2 ring-allreduce train --json run.json")
    g = ap.add_argument_group("data and model")
    g.add_argument("--dataset", choices=("digits", "synthetic"), default="digits")
    g.add_argument("--model", choices=("mlp", "logreg", "linreg"), default=None,
                   help="default: mlp (linreg for --synthetic-task regression)")
    g.add_argument("--hidden", default=DEFAULTS["hidden"], help="MLP hidden widths, comma-separated (default 256)")
    g.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    g.add_argument("--kernel", default="auto",
                   help="model kernel: auto, numpy, numba, cupy or cupy-numba (GPU: the whole step on the device)")
    g.add_argument("--synthetic-task", choices=("classification", "regression"), default="classification")
    g.add_argument("--samples", type=int, default=8192, help="synthetic training rows")
    g.add_argument("--features", type=int, default=256, help="synthetic input width")
    g.add_argument("--classes", type=int, default=10, help="synthetic classes (outputs for regression)")
    g = ap.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    g.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: no limit)")
    g.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], help="global batch (all ranks)")
    g.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="learning rate at --lr-batch rows")
    g.add_argument("--lr-batch", type=int, default=0,
                   help="reference batch for the linear scaling rule: lr * batch-size / lr-batch (0: no scaling)")
    g.add_argument("--warmup-epochs", type=float, default=0.0)
    g.add_argument("--lr-decay", choices=("none", "cosine"), default="none",
                   help="after warmup: constant (default), or cosine decay to 0 at the last step")
    g.add_argument("--momentum", type=float, default=DEFAULTS["momentum"])
    g.add_argument("--weight-decay", type=float, default=DEFAULTS["weight_decay"])
    g.add_argument("--seed", type=int, default=0)
    g = ap.add_argument_group("communication")
    g.add_argument("--algorithm", default="ring",
                   help="allreduce algorithm for the buckets (default ring: the hand-written ring; auto picks by "
                        "size from the tuning table, which may choose native MPI; see ring-allreduce info)")
    g.add_argument("--bucket-mb", type=float, default=1.0, help="gradient bucket size in MiB (0: one bucket)")
    g.add_argument("--overlap", choices=OVERLAP_MODES, default="nonblocking",
                   help="overlap bucket exchange with backward (default nonblocking: measured fastest here)")
    g = ap.add_argument_group("checkpoints and output")
    g.add_argument("--checkpoint-dir", default=None)
    g.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every N steps (0: per epoch)")
    g.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir if it holds a checkpoint")
    g.add_argument("--json", default=None, metavar="PATH", help="write the result (history, digests...) here")
    g.add_argument("--threads", type=int, default=-1,
                   help="BLAS threads per rank (default -1: one, unless OMP_NUM_THREADS, OPENBLAS_NUM_THREADS or "
                        "MKL_NUM_THREADS is set; 0: the library's default, one per core in every rank)")
    g.add_argument("--quiet", action="store_true")
    for m in plugin_mods:
        if hasattr(m, "add_arguments"):
            m.add_arguments(ap)
    return ap


def _validate(ap, args) -> None:
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.lr <= 0:
        ap.error("--lr must be > 0")
    if args.resume and not args.checkpoint_dir:
        ap.error("--resume needs --checkpoint-dir")
    args.model = _model_name(args)
    regression = args.dataset == "synthetic" and args.synthetic_task == "regression"
    if regression != (args.model == "linreg"):
        ap.error(f"--model {args.model} does not fit a {'regression' if regression else 'classification'} task")


def _model_name(args) -> str:
    if args.model is not None:
        return args.model
    return "linreg" if args.dataset == "synthetic" and args.synthetic_task == "regression" else "mlp"


def parse(argv, plugin_mods=()):
    """Parse and validate ``train`` arguments (exits with a usage message on a bad flag, like argparse)."""
    ap = build_parser(plugin_mods)
    args = ap.parse_args(argv)
    _validate(ap, args)
    return args


def build(args, comm, setup=None):
    """Build the task, model, optimizer and trainer from parsed ``args`` (usable from tests and benchmarks)."""
    from . import data, models
    from .optimizer import DistributedOptimizer, WarmupSchedule
    from .trainer import Trainer

    setup = setup or types.SimpleNamespace(comm=comm, alloc=None, callbacks=[])
    dtype = np.dtype(args.dtype)
    if args.dataset == "digits":
        task = data.digits(dtype=dtype)
    else:
        task = data.synthetic(args.synthetic_task, n_train=args.samples, n_test=max(args.samples // 4, 1),
                              n_in=args.features, n_out=args.classes, seed=args.seed, dtype=dtype)
    hidden = [int(h) for h in str(args.hidden).split(",") if h.strip()]
    model = models.build(_model_name(args), task.n_in, task.n_out, hidden, kernel=args.kernel, dtype=dtype)
    params = model.init(args.seed)
    if model.xp is not np:
        params = model.xp.asarray(params)
    alloc = setup.alloc
    if alloc is None and model.xp is not np:  # a GPU run keeps the gradient buckets on the device too
        def alloc(n, dt):
            return model.xp.empty(n, dtype=dt)
    steps_per_epoch = -(-len(task.train) // args.batch_size)
    schedule = WarmupSchedule(args.lr, args.batch_size, args.lr_batch, int(args.warmup_epochs * steps_per_epoch),
                              total_steps=steps_per_epoch * args.epochs if args.lr_decay == "cosine" else 0)
    opt = DistributedOptimizer(comm, params, model.specs, lr=schedule, momentum=args.momentum,
                               weight_decay=args.weight_decay, algorithm=args.algorithm, bucket_mb=args.bucket_mb,
                               overlap=args.overlap, alloc=alloc,
                               update=args.kernel if args.kernel in ("numpy", "numba") else "auto")
    config = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, type(None)))}
    log = (lambda *a, **k: None) if (args.quiet or comm.Get_rank() != 0) else print
    trainer = Trainer(comm, task, model, opt, batch_size=args.batch_size, epochs=args.epochs, seed=args.seed,
                      checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every,
                      max_steps=args.max_steps, log=log, config=config, callbacks=setup.callbacks)
    return trainer


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def limit_threads(n: int):
    """Cap BLAS/OpenMP threads per rank; returns the limiter (a context manager) or None.

    ``n < 0`` means one thread per rank unless the environment already says: data parallelism uses the cores by
    running a rank per core (as ``torchrun`` sets ``OMP_NUM_THREADS=1``). Measured here on digits, p=2: BLAS's
    default (2 threads per rank on 2 cores) gives 10,000 samples/s, one thread per rank 139,000; even at p=1 two
    threads on this model's small matrices ran at 745 samples/s against 160,000 with one.
    """
    if n == 0 or (n < 0 and any(os.environ.get(v) for v in _THREAD_VARS)):
        return None
    try:
        from threadpoolctl import threadpool_limits  # a dependency of scikit-learn
    except ImportError:  # pragma: no cover - then only the environment variables can limit threads
        return None
    return threadpool_limits(limits=max(n, 1))


def main(argv=None) -> int:
    from mpi4py import MPI

    from . import plugins

    comm = MPI.COMM_WORLD
    mods = plugins.discover()
    args = parse(argv, mods)
    with limit_threads(args.threads) or contextlib.nullcontext():
        return _run(args, comm, mods, plugins)


def _run(args, comm, mods, plugins) -> int:
    setup = types.SimpleNamespace(comm=comm, alloc=None, callbacks=[])
    plugins.call(mods, "before_build", args, setup)
    trainer = build(args, comm, setup)
    plugins.call(mods, "after_build", args, trainer)
    rank = comm.Get_rank()
    if rank == 0 and not args.quiet:
        m = trainer.model
        t = trainer.task
        print(f"ring-allreduce train: {args.dataset} ({len(t.train)} train / {len(t.test)} test), "
              f"{args.model} {m.sizes} ({m.n_params:,} params, {args.dtype}), p={comm.Get_size()}, "
              f"batch {args.batch_size}, algorithm {args.algorithm}, {len(trainer.optimizer.buckets)} bucket(s), "
              f"overlap {args.overlap}, kernel {m.kernel.name}", flush=True)
    if args.resume and trainer.load_checkpoint(args.checkpoint_dir) and rank == 0 and not args.quiet:
        print(f"resumed from {args.checkpoint_dir} at epoch {trainer.epoch + 1}, step {trainer.global_step}",
              flush=True)
    result = trainer.fit()
    for extra in plugins.call(mods, "report", args, trainer, result):
        result.update(extra or {})
    if rank == 0:
        if not args.quiet:
            acc = result["test_accuracy"]
            what = f"test accuracy {100 * acc:.2f}%" if acc is not None else f"test loss {result['test_loss']:.5f}"
            sps = result["samples_per_s"] or 0.0
            print(f"done: {what}, {sps:,.0f} samples/s, comm {100 * (result['comm_fraction'] or 0):.1f}% of step time, "
                  f"{result['wall_time_s']:.1f} s, params identical on all ranks: {result['params_identical']}",
                  flush=True)
        if args.json:
            write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
