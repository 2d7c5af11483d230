"""``ring-allreduce train`` plugin: ``--pipeline-stages S --micro-batches M`` (pipeline model parallelism).

Flags (group "pipeline model parallelism"): ``--pipeline-stages S`` (default 1: off; p must be a multiple of S,
giving R = p / S data-parallel replicas of the pipeline), ``--micro-batches M`` (default S), ``--pipeline-schedule
gpipe|1f1b`` (default gpipe). Validated before training, one line on rank 0: p divisible by S, S at most the
number of layers, M >= 1, and no combination with ``--mode ps``, ``--local-steps``, ``--backup-workers``,
``--compression``, ``--balance``, ``--shared-buckets`` or GPU kernels. The JSON result gains a ``pipeline`` block
(:meth:`~.strategy.PipelineStep.report`), and unless ``--quiet`` rank 0 prints the measured bubble next to GPipe's
``(S - 1) / (M + S - 1)``.
"""
from __future__ import annotations

ORDER = 66  # after resilience (60: the heartbeat callback exists) and balance (65)


def add_arguments(ap) -> None:
    from .partition import SCHEDULES

    g = ap.add_argument_group("pipeline model parallelism")
    g.add_argument("--pipeline-stages", type=int, default=None, metavar="S",
                   help="split the MLP's layers into S contiguous stages on S ranks (p = S x replicas; default 1: off)")
    g.add_argument("--micro-batches", type=int, default=None, metavar="M",
                   help="with --pipeline-stages: cut each replica's share of a batch into M micro-batches (default S)")
    g.add_argument("--pipeline-schedule", choices=SCHEDULES, default=None,
                   help="with --pipeline-stages: gpipe (all forwards, then all backwards; default) or 1f1b")


def check(args, p: int, n_layers: int) -> None:
    """Raise :class:`UsageError` (the same on every rank) for a layout or combination that cannot run."""
    from ..usage import UsageError, at_least

    S = args.pipeline_stages
    if S is None or S == 1:
        given = [f for f, v in (("--micro-batches", args.micro_batches),
                                ("--pipeline-schedule", args.pipeline_schedule)) if v is not None]
        if given:
            raise UsageError(f"{' and '.join(given)} {'needs' if len(given) == 1 else 'need'} --pipeline-stages S >= 2")
        return
    at_least("--pipeline-stages", S, 1)
    at_least("--micro-batches", args.micro_batches, 1)
    if p % S:
        raise UsageError(f"--pipeline-stages {S} needs p divisible by {S} (p = stages x replicas), got p={p}")
    if S > n_layers:
        raise UsageError(f"--pipeline-stages {S} exceeds the model's {n_layers} layer(s) (add hidden layers with "
                         "--hidden, e.g. --hidden 64,32,32)")
    for flag, on in (("--mode ps", getattr(args, "mode", "allreduce") == "ps"),
                     ("--local-steps", getattr(args, "local_steps", 0)),
                     ("--backup-workers", getattr(args, "backup_workers", 0)),
                     ("--compression", getattr(args, "compression", None) is not None),
                     ("--balance", getattr(args, "balance", False)),
                     ("--shared-buckets", getattr(args, "shared_buckets", False))):
        if on:
            raise UsageError(f"--pipeline-stages cannot be combined with {flag}")
    if args.kernel.startswith("cupy"):
        raise UsageError("--pipeline-stages moves host (NumPy) activations; GPU kernels are not supported")


def before_build(args, setup) -> None:
    """Check the layout before any data is loaded or model built (the CLI calls this first)."""
    layers = len(getattr(args, "hidden_sizes", None) or []) + 1 if args.model == "mlp" else 1
    check(args, setup.comm.Get_size(), layers)


def after_build(args, trainer) -> None:
    check(args, trainer.size, trainer.model.n_layers)  # again, for callers that build without before_build
    if (args.pipeline_stages or 1) < 2:
        return
    from .strategy import PipelineStep

    step = PipelineStep(trainer, args.pipeline_stages, args.micro_batches or args.pipeline_stages,
                        args.pipeline_schedule or "gpipe")
    trainer.strategy = step
    trainer.callbacks.append(step)


def report(args, trainer, result) -> dict:
    if (args.pipeline_stages or 1) < 2:
        return {}
    rep = trainer.strategy.report(trainer)
    if trainer.rank == 0 and not args.quiet and rep["bubble_fraction"] is not None:
        print(f"pipeline: {rep['stages']} stages x {rep['replicas']} replica(s), {rep['micro_batches']} micro-batches "
              f"({rep['schedule']}): measured bubble {100 * rep['bubble_fraction']:.1f}% of the schedule's time, "
              f"GPipe's (S-1)/(M+S-1) = {100 * rep['bubble_formula']:.1f}%", flush=True)
    return {"pipeline": rep}
