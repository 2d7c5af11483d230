"""``ring-allreduce train`` plugin: backup workers, straggler injection, timeline, heartbeat and stall flags.

Flags (group "stragglers, timeline and failures"):

``--backup-workers B`` wait only for the first p - B ranks each step (0: plain synchronous training);
``--staleness S`` add a late gradient to a later step if at most S steps old (default 0: drop it);
``--straggle RANK:FACTOR[:PROB]`` / ``host:NAME:FACTOR[:PROB]`` / ``random:FACTOR:PROB`` (repeatable) slow ranks'
compute (a host spec: every rank on that node);
``--compute-floor SECONDS`` pad every rank's compute to at least this (emulates a heavier model);
``--timeline PATH`` write a Chrome trace of every rank's phases (rank 0 merges them);
``--heartbeat-interval S`` (default 1; 0 turns the failure detector off), ``--heartbeat-timeout S`` (default 10),
``--stall-timeout S`` (default 60: report who a collective waits for), ``--stall-shutdown S`` (default 0: never
abort a stall that is not a failure).
"""
from __future__ import annotations


ORDER = 60  # after the compression plugin, so its hook is already registered when we check the combination


def add_arguments(ap) -> None:
    g = ap.add_argument_group("stragglers, timeline and failures")
    g.add_argument("--backup-workers", type=int, default=0, metavar="B",
                   help="each step averages the gradients of the first p-B ranks to finish (default 0: all)")
    g.add_argument("--staleness", type=int, default=0, metavar="S",
                   help="with backup workers: add a late gradient to a later step if at most S steps old "
                        "(default 0: late gradients are dropped); with --mode ps --consistency ssp: the SSP bound")
    g.add_argument("--straggle", action="append", default=[], metavar="RANK:FACTOR[:PROB]",
                   help="slow RANK's compute FACTOR times (with probability PROB per step); host:NAME:FACTOR[:PROB] "
                        "slows every rank on host NAME; random:FACTOR:PROB slows one random rank per step; "
                        "repeatable")
    g.add_argument("--compute-floor", type=float, default=0.0, metavar="SECONDS",
                   help="pad every rank's compute to at least this long (emulates a heavier model)")
    g.add_argument("--timeline", default=None, metavar="PATH",
                   help="write a Chrome-trace JSON of every rank's phases (open in ui.perfetto.dev)")
    g.add_argument("--heartbeat-interval", type=float, default=1.0, metavar="S",
                   help="seconds between heartbeats (0: no failure detector)")
    g.add_argument("--heartbeat-timeout", type=float, default=10.0, metavar="S",
                   help="a rank silent this long is reported dead and the job aborted (default 10)")
    g.add_argument("--stall-timeout", type=float, default=60.0, metavar="S",
                   help="report which ranks a collective has waited for longer than this (0: never)")
    g.add_argument("--stall-shutdown", type=float, default=0.0, metavar="S",
                   help="abort the job when a stall lasts this long (default 0: only report)")


def _fail(trainer, msg):
    from ..usage import UsageError

    raise UsageError(msg)  # the same flags on every rank: every rank raises it; rank 0 prints one line


def after_build(args, trainer) -> None:
    from .callbacks import HeartbeatCallback, StepClock, StraggleCallback, TimelineCallback
    from .straggle import Straggler
    from .strategy import BackupStep

    p = trainer.size
    if not 0 <= args.backup_workers < p:
        _fail(trainer, f"--backup-workers must be between 0 and p-1 = {p - 1}, got {args.backup_workers}")
    if args.staleness < 0:
        _fail(trainer, f"--staleness must be >= 0, got {args.staleness}")
    if args.staleness and not args.backup_workers and getattr(args, "mode", None) != "ps":
        _fail(trainer, "--staleness needs --backup-workers B > 0 (or --mode ps --consistency ssp)")
    if args.backup_workers and getattr(args, "compression", None) is not None:
        _fail(trainer, "--backup-workers cannot be combined with --compression yet (the compression hook's "
                       "state assumes every rank takes part in every step)")
    if args.heartbeat_interval < 0 or (args.heartbeat_interval and args.heartbeat_timeout <= args.heartbeat_interval):
        _fail(trainer, "--heartbeat-timeout must exceed --heartbeat-interval (and the interval be >= 0)")
    host = ""
    if any(str(s).strip().lower().startswith("host:") for s in args.straggle):
        from mpi4py import MPI

        host = MPI.Get_processor_name()
        hosts = trainer.comm.allgather(host)
    try:
        straggler = Straggler(args.straggle, trainer.rank, p, seed=args.seed, floor_s=args.compute_floor, host=host)
    except ValueError as e:
        _fail(trainer, str(e))
    for s in straggler.specs:
        if s.host is not None and s.host not in hosts:
            _fail(trainer, f"--straggle {s}: no rank runs on host {s.host!r} (hosts: {', '.join(sorted(set(hosts)))})")
    trainer.callbacks.append(StepClock())
    if straggler.active:
        trainer.callbacks.append(StraggleCallback(straggler))
    if args.heartbeat_interval > 0 and p > 1:
        trainer.callbacks.append(HeartbeatCallback(args.heartbeat_interval, args.heartbeat_timeout,
                                                   args.stall_timeout or None, args.stall_shutdown))
    if args.backup_workers:
        strategy = BackupStep(args.backup_workers, args.staleness)
        trainer.strategy = strategy
        trainer.callbacks.append(strategy)
    if args.timeline:
        trainer.callbacks.append(TimelineCallback(args.timeline, trainer.rank))


def _find(trainer, name):
    for cb in trainer.callbacks:
        if getattr(cb, "name", None) == name:
            return cb
    return None


def report(args, trainer, result) -> dict:
    out = {}
    clock = _find(trainer, "stepclock")
    if clock is not None:
        out["step_time"] = trainer.comm.allgather(clock.summary())
    backup = _find(trainer, "backup")
    if backup is not None:
        out["backup"] = backup.report(trainer.comm)
    slow = _find(trainer, "straggle")
    out["straggle"] = {"specs": list(args.straggle), "compute_floor_s": args.compute_floor,
                       "slowed_steps": trainer.comm.allgather(slow.straggler.slowed_steps if slow else 0)}
    if args.timeline:
        out["timeline"] = args.timeline
    return out
