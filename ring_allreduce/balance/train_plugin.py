"""``ring-allreduce train`` plugin: ``--balance`` (each rank's share of a batch follows its speed).

Flags (group "load balancing"): ``--balance``; ``--balance-every K`` (re-split every K steps, default 10);
``--balance-speeds S0,S1,...`` (fix the relative speeds instead of measuring them: one per rank, for tests and
studies). The JSON result gains a ``balance`` block (:meth:`~.balancer.Balancer.report`).

Works with ``--compression`` (a gradient is a gradient whatever the rows behind it) and ``--backup-workers``
(the backup rule drops late ranks' rows and rescales by the rows that arrived, as without balancing). Refused
with one line: ``--mode ps``, ``--local-steps`` (each worker's local steps would use batches of another size) and
``--pipeline-stages`` (a stage's rows are fixed by the pipeline).
"""
from __future__ import annotations

ORDER = 65  # after resilience (60): the straggler injector exists when the balancer looks for it


def add_arguments(ap) -> None:
    g = ap.add_argument_group("load balancing")
    g.add_argument("--balance", action="store_true",
                   help="give each rank a share of every global batch proportional to its measured speed")
    g.add_argument("--balance-every", type=int, default=None, metavar="K",
                   help="with --balance: re-split every K steps from the allgathered timings (default 10)")
    g.add_argument("--balance-speeds", default=None, metavar="S0,S1,...",
                   help="with --balance: fixed relative speeds, one per rank, instead of measured ones")


def parse_speeds(text: str, p: int) -> list:
    """Parse ``--balance-speeds``: ``p`` finite positive numbers; raise :class:`UsageError` otherwise."""
    from ..usage import UsageError

    try:
        speeds = [float(x) for x in str(text).split(",")]
    except ValueError:
        raise UsageError(f"--balance-speeds {text!r}: expected comma-separated numbers") from None
    if len(speeds) != p:
        raise UsageError(f"--balance-speeds {text!r}: {len(speeds)} value(s) for {p} rank(s); give one per rank")
    if not all(s > 0 and s != float("inf") for s in speeds):
        raise UsageError(f"--balance-speeds {text!r}: speeds must be finite and > 0")
    return speeds


def check(args, p: int):
    """Raise :class:`UsageError` for flags that cannot go together; return the forced speeds (or None)."""
    from ..usage import UsageError, at_least

    if not args.balance:
        given = [f for f, v in (("--balance-every", args.balance_every), ("--balance-speeds", args.balance_speeds))
                 if v is not None]
        if given:
            raise UsageError(f"{' and '.join(given)} {'needs' if len(given) == 1 else 'need'} --balance")
        return None
    at_least("--balance-every", args.balance_every, 1)
    for flag, on in (("--mode ps", getattr(args, "mode", "allreduce") == "ps"),
                     ("--local-steps", getattr(args, "local_steps", 0)),
                     ("--pipeline-stages", (getattr(args, "pipeline_stages", None) or 1) > 1)):
        if on:
            raise UsageError(f"--balance cannot be combined with {flag} (it splits the batch of synchronous "
                             "data-parallel steps)")
    return None if args.balance_speeds is None else parse_speeds(args.balance_speeds, p)


def before_build(args, setup) -> None:
    """Check the flags before any data is loaded or model built (the CLI calls this first)."""
    check(args, setup.comm.Get_size())


def after_build(args, trainer) -> None:
    forced = check(args, trainer.size)  # again, for callers that build without before_build
    if not args.balance:
        return
    from .balancer import Balancer

    bal = Balancer(trainer.comm, args.batch_size, args.balance_every or 10, forced)
    trainer.sharder = bal
    trainer.callbacks.append(bal)


def report(args, trainer, result) -> dict:
    return {"balance": trainer.sharder.report()} if args.balance else {}
