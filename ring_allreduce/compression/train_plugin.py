"""``ring-allreduce train`` plugin: the ``--compression`` flags, the compression comm hook and its JSON report.

Without ``--compression`` the trainer keeps its default allreduce hook. With it (``none`` included, the baseline
the ratios are measured against), every bucket goes through :func:`~.hook.compression_hook`, the hook state is
checkpointed per rank by the trainer (error-feedback memory, generators, PowerSGD's Q) and the result JSON gains
``wire_bytes_per_step`` (per rank, counted at the transport), ``compression_ratio`` (payload) and
``wire_ratio_vs_fp32_ring``.
"""
from __future__ import annotations

import argparse

ORDER = 40  # before plugins that wrap or replace the hook (they see ours as the one to wrap)


def add_arguments(ap) -> None:
    from . import names

    g = ap.add_argument_group("gradient compression")
    g.add_argument("--compression", choices=names(), default=None,
                   help="compress gradients (default: plain allreduce; 'none' runs the compression path uncompressed)")
    g.add_argument("--compression-ratio", type=float, default=None,
                   help="fraction of elements kept by topk/randomk (default 0.01)")
    g.add_argument("--powersgd-rank", type=int, default=None, help="PowerSGD approximation rank (default 2)")
    g.add_argument("--error-feedback", action=argparse.BooleanOptionalAction, default=None,
                   help="residual error feedback (default: on for lossy compressors)")
    g.add_argument("--compress-after-steps", type=int, default=0, metavar="N",
                   help="send the first N steps uncompressed (warm-up)")
    # the hook compresses host copies of the buckets, so only the host (NumPy-array) kernel sets apply here
    g.add_argument("--compression-kernels", choices=("auto", "numpy", "numba"), default="auto",
                   help="compression kernel set (auto: numba when installed, else numpy)")


def _given(args) -> list:
    flags = []
    if args.compression_ratio is not None:
        flags.append("--compression-ratio")
    if args.powersgd_rank is not None:
        flags.append("--powersgd-rank")
    if args.error_feedback is not None:
        flags.append("--error-feedback" if args.error_feedback else "--no-error-feedback")
    if args.compress_after_steps:
        flags.append("--compress-after-steps")
    return flags


def _fail(trainer, msg):
    from ..usage import UsageError

    raise UsageError(msg)  # the same flags on every rank: every rank raises it; rank 0 prints one line


def after_build(args, trainer) -> None:
    from .hook import HookState, StepCounter, compression_hook

    if args.compression is None:
        if _given(args):
            _fail(trainer, f"{', '.join(_given(args))} need --compression NAME")
        return
    kset = args.compression_kernels
    if kset == "auto":
        import importlib.util

        kset = "numba" if importlib.util.find_spec("numba") is not None else "numpy"
    try:
        state = HookState(trainer.optimizer.comm, args.compression, trainer.model.specs,
                          ratio=args.compression_ratio, powersgd_rank=args.powersgd_rank,
                          error_feedback=args.error_feedback, compress_after_steps=args.compress_after_steps,
                          seed=args.seed, kernels=kset, algorithm=args.algorithm)
    except ValueError as e:  # the same arguments on every rank: every rank fails the same way
        _fail(trainer, str(e))
    trainer.optimizer.register_comm_hook(state, compression_hook)
    trainer.callbacks.append(StepCounter(state))


def report(args, trainer, result) -> dict:
    from .hook import HookState, wire_report

    if args.compression is None:
        return {}
    state = trainer.optimizer.hook_state
    return wire_report(trainer.comm, state if isinstance(state, HookState) else None)
