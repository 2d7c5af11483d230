"""An emulated cluster on one Linux machine: hosts as namespaces on a bridge, links shaped with ``tc``.

``ring-allreduce cluster up|status|set-link|run|down`` (see :mod:`.cli`); from Python (benchmarks, tests)::

    from ring_allreduce import cluster
    st = cluster.up("study", hosts=2, link="1gbit")
    try:
        res = cluster.run(st, ["python", "-m", "ring_allreduce", "bench"], ranks_per_host=2, capture=True)
    finally:
        cluster.down("study")

Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and iproute2; nothing here touches the network at import.
"""
from __future__ import annotations

from .state import DEFAULT_NAME, DEFAULT_SUBNET, ClusterError, load, require


def up(name: str = DEFAULT_NAME, hosts: int = 2, link=None, link_of=None, subnet: str = DEFAULT_SUBNET) -> dict:
    """Create the cluster; ``link`` is every host's rate (``"1gbit"``, None: unshaped), ``link_of`` overrides
    it per host (``{"h2": "200mbit"}``). Returns its state (a plain dict)."""
    from . import net, shaping

    rates = {f"h{i}": shaping.parse_rate(link) for i in range(1, hosts + 1)}
    for h, rate in (link_of or {}).items():
        if h not in rates:
            raise ClusterError(f"--link-of {h}: no such host; hosts are h1..h{hosts}")
        rates[h] = shaping.parse_rate(rate)
    return net.up(name, hosts, subnet, rates)


def down(name: str = DEFAULT_NAME) -> list:
    """Remove the cluster and everything running on it (idempotent); returns what was removed."""
    from . import net

    net.preflight()
    return net.down(name)


def set_link(st_or_name, host: str, what: str) -> dict:
    """Set host's link to a rate (``"200mbit"``, ``"unlimited"``), ``"down"`` or ``"up"``; returns the state."""
    from . import net
    from .state import host as find

    st = require(st_or_name) if isinstance(st_or_name, str) else require(st_or_name["name"])
    net.set_link(st, find(st, host), what)
    return st


def run(st_or_name, cmd, ranks_per_host=None, layout=None, **kw):
    """Run ``cmd`` as an MPI job on the cluster (see :func:`.launch.run` for ``mpi``, ``timeout``, ``grace``,
    ``capture``, ``stream``, ``env``); returns a :class:`.launch.JobResult`."""
    from . import launch

    st = require(st_or_name) if isinstance(st_or_name, str) else st_or_name
    sizes = launch.parse_layout(layout, len(st["hosts"]), ranks_per_host)
    return launch.run(st, list(cmd), sizes, **kw)


__all__ = ["up", "down", "set_link", "run", "load", "require", "ClusterError", "DEFAULT_NAME", "DEFAULT_SUBNET"]
