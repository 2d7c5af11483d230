"""``ring-allreduce train`` plugin: ``--mode ps`` (parameter server) and the per-host traffic report of every mode.

Flags (group "training mode"): ``--mode allreduce|ps`` (default allreduce), ``--servers S`` (default 1: the first
S ranks are servers), ``--consistency bsp|ssp|asp`` (default bsp); SSP's bound is the existing ``--staleness S``.
Combinations that cannot work are refused before training with one line on rank 0 (exit status 2 on every rank).

The JSON result gains, for every mode, ``mode``, ``hosts`` (each rank's host name), ``bytes_per_host`` (the
``bytes_sent`` of the ranks of each host, summed) and ``comm_wait_s`` (per rank: seconds in the ``comm`` and
``wait`` phases, i.e. exchanging or waiting for others), and for ``--mode ps`` a ``ps`` block (see
:meth:`~.strategy.ParameterServerStep.report`: roles, waits, the clock gaps observed, analytical bytes per rank).
"""
from __future__ import annotations


ORDER = 55  # after compression (40), before resilience (60) which would otherwise reject --staleness without -b


def add_arguments(ap) -> None:
    from .layout import CONSISTENCY

    g = ap.add_argument_group("training mode")
    g.add_argument("--mode", choices=("allreduce", "ps"), default="allreduce",
                   help="allreduce (default: data parallel on the hand-written allreduce) or ps (parameter server)")
    g.add_argument("--servers", type=int, default=None, metavar="S",
                   help="with --mode ps: the first S ranks are servers holding contiguous parameter shards (default 1)")
    g.add_argument("--consistency", choices=CONSISTENCY, default=None,
                   help="with --mode ps: bsp (default), ssp (bounded by --staleness) or asp (no waiting)")


def _fail(rank, msg):
    from ..usage import UsageError

    raise UsageError(msg)  # the same flags on every rank: every rank raises it; rank 0 prints one line


def check(args, p: int):
    """Return the one-line error for a combination of flags that cannot run on ``p`` ranks, or None."""
    if args.mode != "ps":
        given = [f for f, v in (("--servers", args.servers), ("--consistency", args.consistency)) if v is not None]
        return f"{' and '.join(given)} need --mode ps" if given else None
    S = 1 if args.servers is None else args.servers
    if S < 1:
        return f"--servers must be >= 1, got {S}"
    if S >= p:
        return f"--mode ps needs at least one worker: --servers {S} leaves none of the {p} rank(s) (run p >= S + 1)"
    consistency = args.consistency or "bsp"
    if getattr(args, "staleness", 0) and consistency != "ssp":
        return f"--staleness is the SSP bound: it needs --consistency ssp (got {consistency})"
    for flag, on in (("--backup-workers", getattr(args, "backup_workers", 0)),
                     ("--compression", getattr(args, "compression", None) is not None),
                     ("--shared-buckets", getattr(args, "shared_buckets", False)),
                     ("--local-steps", getattr(args, "local_steps", 0))):
        if on:
            return f"--mode ps cannot be combined with {flag} (the parameter server moves no gradient buckets)"
    if args.kernel.startswith("cupy"):
        return "--mode ps moves host (NumPy) arrays; GPU kernels are not supported"
    return None


def after_build(args, trainer) -> None:
    err = check(args, trainer.size)
    if err:
        _fail(trainer.rank, err)
    if args.mode != "ps":
        return
    from .strategy import ParameterServerStep

    strategy = ParameterServerStep(args.servers or 1, args.consistency or "bsp", args.staleness)
    trainer.strategy = strategy
    trainer.callbacks.append(strategy)


def per_host(comm, values) -> dict:
    """``{host name: sum of values of its ranks}`` (collective); host names in rank order of first appearance."""
    from mpi4py import MPI

    hosts = comm.allgather(MPI.Get_processor_name())
    out: dict = {}
    for h, v in zip(hosts, values):
        out[h] = out.get(h, 0) + v
    return {"hosts": hosts, "per_host": out}


def report(args, trainer, result) -> dict:
    ph = per_host(trainer.comm, result["bytes_sent"])
    t = trainer.timer.totals
    waits = trainer.comm.allgather(t.get("comm", 0.0) + t.get("wait", 0.0))
    out = {"mode": args.mode, "hosts": ph["hosts"], "bytes_per_host": ph["per_host"], "comm_wait_s": waits}
    if args.mode == "ps":
        out["ps"] = trainer.strategy.report(trainer)
    return out
