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
from ..usage import ArgumentParser, UsageError, agree, at_least, finite
from .buckets import OVERLAP_MODES

# measured on digits, 10 seeds at p=1: test accuracy 97.21-98.61% (mean 97.69%), about 2 s at p=2
DEFAULTS = {"epochs": 20, "batch_size": 32, "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "hidden": "256"}
#: default learning rate per dataset: the synthetic MLP (256 inputs, 8,192 rows) diverges at 0.05 (loss 2.5 ->
#: 4.0 in 3 epochs, measured at p=1, 2 and 4) and converges at 0.01 (loss 1.65 -> 0.30, test accuracy 73%)
DEFAULT_LR = {"digits": DEFAULTS["lr"], "synthetic": 0.01}


def build_parser(plugin_mods=()) -> argparse.ArgumentParser:
    ap = ArgumentParser(prog="ring-allreduce train", description=__doc__.splitlines()[0].strip('"'),
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
    g.add_argument("--lr", type=float, default=None,
                   help="learning rate at --lr-batch rows (default: 0.05 for digits, 0.01 for synthetic)")
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
    g.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint in --checkpoint-dir (an error when there is none)")
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
    """Raise :class:`UsageError` for a meaningless value; fills in the defaults that depend on other flags.

    ``ap`` (the parser) is unused: kept so callers that parse themselves keep working.
    """
    for flag in ("--epochs", "--batch-size", "--samples", "--features"):
        at_least(flag, getattr(args, flag[2:].replace("-", "_")), 1)
    for flag in ("--max-steps", "--checkpoint-every", "--lr-batch"):
        at_least(flag, getattr(args, flag[2:].replace("-", "_")), 0)
    at_least("--threads", args.threads, -1)
    if args.lr is None:
        args.lr = DEFAULT_LR[args.dataset]
    finite("--lr", args.lr, 0, low_open=True)
    finite("--momentum", args.momentum, 0, 1)
    finite("--weight-decay", args.weight_decay, 0)
    finite("--warmup-epochs", args.warmup_epochs, 0)
    finite("--bucket-mb", args.bucket_mb, 0)
    try:
        args.hidden_sizes = [int(h) for h in str(args.hidden).split(",") if h.strip()]
    except ValueError:
        raise UsageError(f"--hidden takes comma-separated positive integers (e.g. 256 or 512,256), "
                         f"got {args.hidden!r}") from None
    if any(h < 1 for h in args.hidden_sizes):
        raise UsageError(f"--hidden widths must be >= 1, got {args.hidden!r}")
    _check_names(args)
    if args.resume and not args.checkpoint_dir:
        raise UsageError("--resume needs --checkpoint-dir")
    if args.checkpoint_every and not args.checkpoint_dir:
        raise UsageError("--checkpoint-every needs --checkpoint-dir")
    args.model = _model_name(args)
    regression = args.dataset == "synthetic" and args.synthetic_task == "regression"
    if regression != (args.model == "linreg"):
        raise UsageError(f"--model {args.model} does not fit a {'regression' if regression else 'classification'} task")
    if not regression and args.classes < 2:
        raise UsageError(f"--classes must be >= 2 for classification, got {args.classes}")
    at_least("--classes", args.classes, 1)
    if args.json and os.path.isdir(args.json):
        raise UsageError(f"--json {args.json} is a directory; give a file name")
    for name in ("heartbeat_interval", "heartbeat_timeout", "stall_timeout", "stall_shutdown", "compute_floor"):
        if hasattr(args, name):  # the resilience plugin's flags, checked here so a bad one fails before any work
            finite("--" + name.replace("_", "-"), getattr(args, name), 0)


def _check_names(args) -> None:
    from .. import algorithms
    from . import model_kernels

    valid = algorithms.names() + ["auto"]
    if args.algorithm not in valid:
        raise UsageError(f"unknown --algorithm {args.algorithm!r}; valid: {', '.join(valid)}")
    valid = ["auto"] + model_kernels.names()
    if args.kernel not in valid:
        raise UsageError(f"unknown --kernel {args.kernel!r}; valid: {', '.join(valid)}")


def _model_name(args) -> str:
    if args.model is not None:
        return args.model
    return "linreg" if args.dataset == "synthetic" and args.synthetic_task == "regression" else "mlp"


def parse(argv, plugin_mods=()):
    """Parse and validate ``train`` arguments; raises :class:`~ring_allreduce.usage.UsageError` on a bad one."""
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
    hidden = getattr(args, "hidden_sizes", None) or [int(h) for h in str(args.hidden).split(",") if h.strip()]
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
    if getattr(args, "compression", None) is not None:
        trainer.console_extras.add("bytes")
    if getattr(args, "backup_workers", 0) or getattr(args, "straggle", None):
        trainer.console_extras.add("contributors")
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


#: ``RANK``: that rank stops itself (SIGSTOP) as start-up work begins (tests the heartbeat's early start)
STOP_AT_START_ENV = "RING_ALLREDUCE_FAULT_START"


def _check_paths(args) -> dict:
    """Rank 0: check --checkpoint-dir (and the checkpoint to resume) before any work; returns its metadata."""
    from . import checkpoint as ckpt

    d = args.checkpoint_dir
    if not d:
        return {}
    if os.path.exists(d) and not os.path.isdir(d):
        raise UsageError(f"--checkpoint-dir {d} exists and is not a directory")
    if args.resume and not os.path.isfile(ckpt.path_in(d)):
        raise UsageError(f"--resume: no checkpoint in {d} ({ckpt.FILENAME} not found); drop --resume to start "
                         "a new run there")
    try:
        os.makedirs(d, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--checkpoint-dir {d}: cannot create it ({e.strerror})") from None
    if not os.access(d, os.W_OK | os.X_OK):
        raise UsageError(f"--checkpoint-dir {d} is not writable")
    ckpt.clean_temporaries(d)
    if not args.resume:
        return {}
    try:
        _, meta = ckpt.load(ckpt.path_in(d))
    except ckpt.CheckpointError as e:
        raise UsageError(str(e)) from None
    missing = [k for k in ("epoch", "step_in_epoch", "global_step", "seed", "batch_size", "model") if k not in meta]
    if missing:
        raise UsageError(f"checkpoint {ckpt.path_in(d)} was not written by ring-allreduce train (no {missing[0]})")
    return meta


def _launched() -> bool:
    """Whether a launcher (mpiexec, mpirun, srun) started this process, as opposed to plain ``python``."""
    return any(v in os.environ for v in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK",
                                         "SLURM_STEP_ID", "HYDRA_CONTROL_FD"))


def main(argv=None) -> int:
    from mpi4py import MPI

    from . import plugins

    comm = MPI.COMM_WORLD
    mods = plugins.discover()
    args = agree(comm, parse, argv, mods)
    meta = agree(comm, _check_paths, args, root=0)  # rank 0 writes and reads checkpoints
    if comm.Get_rank() == 0 and comm.Get_size() == 1 and not _launched():
        print("ring-allreduce train: running on 1 rank (no mpiexec); for data parallelism start it with "
              "mpiexec -n N ring-allreduce train ...", file=sys.stderr, flush=True)
    with limit_threads(args.threads) or contextlib.nullcontext():
        return _run(args, comm, mods, plugins, meta)


def _start_heartbeat(args, comm):
    """Start the failure detector before data loading, model build and the parameter broadcast."""
    if not hasattr(args, "heartbeat_interval") or comm.Get_size() < 2:
        return None
    if args.heartbeat_interval and args.heartbeat_timeout <= args.heartbeat_interval:
        raise UsageError("--heartbeat-timeout must exceed --heartbeat-interval")
    from ..resilience import heartbeat

    hb = heartbeat.start_early(comm, args.heartbeat_interval, args.heartbeat_timeout, args.stall_timeout or None,
                               args.stall_shutdown)
    if os.environ.get(STOP_AT_START_ENV) == str(comm.Get_rank()):
        import signal

        os.kill(os.getpid(), signal.SIGSTOP)
    return hb


def _run(args, comm, mods, plugins, resume_meta=None) -> int:
    rank = comm.Get_rank()
    hb = _start_heartbeat(args, comm)
    # leaving on an exception stops the heartbeat without a "bye", so the other ranks notice and abort
    with hb or contextlib.nullcontext():
        trainer, result = _train(args, comm, mods, plugins, resume_meta or {})
    if rank == 0:
        if not args.quiet:
            print(_done_line(result), flush=True)
        if args.json:
            write_json(args.json, result)
    return 0


def _train(args, comm, mods, plugins, resume_meta):
    rank = comm.Get_rank()
    setup = types.SimpleNamespace(comm=comm, alloc=None, callbacks=[])
    plugins.call(mods, "before_build", args, setup)
    trainer = build(args, comm, setup)
    plugins.call(mods, "after_build", args, trainer)
    if rank == 0 and not args.quiet:
        m = trainer.model
        t = trainer.task
        print(f"ring-allreduce train: {args.dataset} ({len(t.train)} train / {len(t.test)} test), "
              f"{args.model} {m.sizes} ({m.n_params:,} params, {args.dtype}), p={comm.Get_size()}, "
              f"batch {args.batch_size}, lr {args.lr:g}, algorithm {args.algorithm}, "
              f"{len(trainer.optimizer.buckets)} bucket(s), overlap {args.overlap}, kernel {m.kernel.name}",
              flush=True)
    try:
        resumed = args.resume and trainer.load_checkpoint(args.checkpoint_dir)
    except ValueError as e:  # raised alike on every rank: the checkpoint does not fit these flags
        raise UsageError(str(e)) from None
    if resumed and rank == 0 and not args.quiet:
        print(f"resumed from {args.checkpoint_dir} at epoch {trainer.epoch + 1}, step {trainer.global_step}",
              flush=True)
        done = trainer.epoch >= trainer.epochs or (args.max_steps and trainer.global_step >= args.max_steps)
        if done:
            print(f"the checkpoint has already finished ({resume_meta.get('epoch', trainer.epoch)} epoch(s), "
                  f"step {trainer.global_step}): nothing to train; raise --epochs or --max-steps to go on",
                  flush=True)
    result = trainer.fit()
    for extra in plugins.call(mods, "report", args, trainer, result):
        result.update(extra or {})
    return trainer, result


def _done_line(result: dict) -> str:
    acc, loss = result.get("test_accuracy"), result.get("test_loss")
    if acc is not None:
        what = f"test accuracy {100 * acc:.2f}%"
    elif loss is not None:
        what = f"test loss {loss:.5f}"
    else:
        what = "no evaluation"
    sps = result.get("samples_per_s")
    rate = (f"{sps:,.0f} samples/s, comm {100 * (result['comm_fraction'] or 0):.1f}% of step time"
            if sps else "no training steps run")
    return (f"done: {what}, {rate}, {result['wall_time_s']:.1f} s, params identical on all ranks: "
            f"{result['params_identical']}")


if __name__ == "__main__":
    sys.exit(main())
