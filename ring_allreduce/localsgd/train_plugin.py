"""``ring-allreduce train`` plugin: ``--local-steps H`` and ``--local-steps-after E`` (local SGD, post-local SGD).

The JSON result gains a ``local_sgd`` block: ``local_steps``, ``after_epochs``, ``averagings``,
``synchronous_steps`` and ``analytical_bytes`` per rank (next to the counted ``bytes_sent``).
"""
from __future__ import annotations


ORDER = 56  # next to the parameter-server plugin, before resilience (60)


def add_arguments(ap) -> None:
    g = ap.add_argument_group("local SGD")
    g.add_argument("--local-steps", type=int, default=0, metavar="H",
                   help="take H local steps per rank, then average parameters and momentum (default 0: off)")
    g.add_argument("--local-steps-after", type=int, default=0, metavar="E",
                   help="with --local-steps: train the first E epochs synchronously, then locally (post-local SGD)")


def check(args):
    """The one-line error for flags that cannot go together, or None."""
    if args.local_steps < 0:
        return f"--local-steps must be >= 1 (0: off), got {args.local_steps}"
    if args.local_steps_after < 0:
        return f"--local-steps-after must be >= 0, got {args.local_steps_after}"
    if not args.local_steps:
        return "--local-steps-after needs --local-steps H" if args.local_steps_after else None
    for flag, on in (("--backup-workers", getattr(args, "backup_workers", 0)),
                     ("--compression", getattr(args, "compression", None) is not None)):
        if on:
            return f"--local-steps cannot be combined with {flag} (averaging moves parameters, not gradients)"
    if args.kernel.startswith("cupy"):
        return "--local-steps averages host (NumPy) arrays; GPU kernels are not supported"
    return None


def after_build(args, trainer) -> None:
    err = check(args)
    if err:
        from ..usage import UsageError

        raise UsageError(err)  # the same flags on every rank: every rank raises it; rank 0 prints one line
    if args.local_steps and getattr(args, "mode", "allreduce") == "allreduce":
        from .strategy import LocalSGDStep

        trainer.strategy = LocalSGDStep(args.local_steps, args.local_steps_after)


def report(args, trainer, result) -> dict:
    from .strategy import LocalSGDStep

    if isinstance(trainer.strategy, LocalSGDStep):
        return {"local_sgd": trainer.strategy.report(trainer)}
    return {}
