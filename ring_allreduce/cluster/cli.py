"""``ring-allreduce cluster up|status|set-link|run|down``: several hosts with links of a chosen speed on one machine.

Examples::

    ring-allreduce cluster up --hosts 2 --link 1gbit            # h1, h2 on a bridge, 1 Gbit/s each way
    ring-allreduce cluster run --ranks-per-host 2 -- ring-allreduce bench --sizes 4MiB
    ring-allreduce cluster set-link h2 200mbit                  # while a job runs; also `down` / `up`
    ring-allreduce cluster status
    ring-allreduce cluster down                                 # idempotent, also after a crash
"""
from __future__ import annotations

import argparse
import json
import sys

from .state import DEFAULT_NAME, DEFAULT_SUBNET, ClusterError


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ring-allreduce cluster", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="action", metavar="{up,status,set-link,run,down}")
    sub.required = True

    def add(name, help_):
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--name", default=DEFAULT_NAME, help=f"cluster name (default {DEFAULT_NAME}); prefixes "
                       "its namespaces and interfaces")
        return p

    p = add("up", "create N hosts (network + UTS namespaces) on a bridge, each link shaped to a rate")
    p.add_argument("--hosts", type=int, required=True, help="number of hosts (h1..hN)")
    p.add_argument("--link", default=None, help="every host's link rate, both directions: e.g. 100mbit, 1gbit "
                   "(default: unshaped)")
    p.add_argument("--link-of", action="append", default=[], metavar="HOST=RATE",
                   help="one host's rate, e.g. h2=200mbit (repeatable)")
    p.add_argument("--subnet", default=DEFAULT_SUBNET, help=f"private IPv4 subnet (default {DEFAULT_SUBNET}); "
                   "it has no uplink: traffic never leaves the machine")
    p = add("status", "print hosts, addresses, rates, link states and byte counters")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p = add("set-link", "change a host's link while jobs run: a rate, `unlimited`, `down` or `up`")
    p.add_argument("host", help="h1..hN")
    p.add_argument("rate", metavar="RATE|down|up")
    add("down", "stop every process on the hosts and remove the namespaces, links and state (idempotent)")
    p = add("run", "run an MPI job across the hosts (block placement, printed at start)")
    p.add_argument("--ranks-per-host", type=int, default=None, help="ranks on every host (default 1)")
    p.add_argument("--layout", default=None, help="ranks per host on the first hosts, e.g. 2+1 or 2x2")
    p.add_argument("--mpi", choices=("mpich", "openmpi"), default=None,
                   help="the MPI of mpiexec on PATH (default: detected from `mpiexec --version`)")
    p.add_argument("--mpiexec", default=None, help="the launcher to use (default: mpiexec on PATH)")
    p.add_argument("--timeout", type=float, default=None, help="kill the whole job after this many seconds")
    p.add_argument("--grace", type=float, default=5.0, help="seconds the launcher gets to end the job after a "
                   "rank reported a failure, before every process left is killed (default 5)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    return ap


def status(name: str) -> dict:
    from . import net
    from .state import require

    st = require(name)
    for h in st["hosts"]:
        h["bytes"] = net.counters(h)
        h["processes"] = len(net.netns_pids(h["netns"]))
    return st


def _print_status(st: dict) -> None:
    from .shaping import format_rate

    print(f"cluster {st['name']}: {len(st['hosts'])} host(s) on bridge {st['bridge']} ({st['bridge_addr']}, "
          f"subnet {st['subnet']})")
    print(f"  {'host':5s} {'hostname':14s} {'address':15s} {'link':5s} {'rate':>10s} {'sent B':>14s} "
          f"{'received B':>14s} {'procs':>5s}")
    for h in st["hosts"]:
        b = h["bytes"]
        print(f"  {h['host']:5s} {h['hostname']:14s} {h['addr']:15s} {h['link']:5s} {format_rate(h['rate']):>10s} "
              f"{b['sent'] if b['sent'] is not None else '-':>14} {b['received'] if b['received'] is not None else '-':>14} "
              f"{h['processes']:>5d}")


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from . import net

    try:
        net.preflight()
        return _dispatch(args)
    except ClusterError as e:
        print(f"ring-allreduce: error: {e}", file=sys.stderr)
        return 2


def _dispatch(args) -> int:
    from . import down, run, set_link, up
    from .shaping import format_rate

    if args.action == "up":
        link_of = {}
        for item in args.link_of:
            h, sep, rate = item.partition("=")
            if not sep:
                raise ClusterError(f"--link-of {item!r}: use HOST=RATE, e.g. h2=200mbit")
            link_of[h.strip()] = rate.strip()
        st = up(args.name, args.hosts, args.link, link_of, args.subnet)
        print(f"cluster {st['name']} is up: " + ", ".join(f"{h['host']} {h['addr']} ({format_rate(h['rate'])})"
                                                          for h in st["hosts"]))
        return 0
    if args.action == "status":
        st = status(args.name)
        if args.json:
            print(json.dumps(st, indent=1))
        else:
            _print_status(st)
        return 0
    if args.action == "set-link":
        st = set_link(args.name, args.host, args.rate)
        from .state import host

        h = host(st, args.host)
        print(f"{h['host']}: link {h['link']}, {format_rate(h['rate'])}")
        return 0
    if args.action == "down":
        removed = down(args.name)
        print(f"cluster {args.name}: " + ("removed " + ", ".join(removed) if removed else "nothing to remove"))
        return 0
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise ClusterError("cluster run needs a command after --, e.g. `cluster run -- ring-allreduce bench`")
    res = run(args.name, cmd, ranks_per_host=args.ranks_per_host, layout=args.layout, mpi=args.mpi,
              mpiexec=args.mpiexec, timeout=args.timeout, grace=args.grace)
    return res.returncode
