"""The emulated cluster's description: names, addresses and rates, kept as a small JSON file per cluster.

Everything ``down`` must undo is recorded here *before* it is created, so a crash halfway through ``up`` (or a
job that died) still leaves a file from which ``down`` removes every namespace, link and mount. The folder is
``$RING_ALLREDUCE_CLUSTER_DIR`` or ``/run/ring-allreduce-cluster`` (tmpfs: a reboot forgets it, as it forgets
the namespaces); each cluster has ``<dir>/<name>/state.json`` plus its generated launcher agent.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re

from .._io import write_json

DEFAULT_NAME = "ringar"
DEFAULT_SUBNET = "10.201.77.0/24"  # private, rarely used; `up` refuses a subnet this machine already routes
ENV_DIR = "RING_ALLREDUCE_CLUSTER_DIR"
_NAME = re.compile(r"[a-z][a-z0-9]{0,9}")  # "<name>-h12" must fit Linux's 15-character interface names
MAX_HOSTS = 64


class ClusterError(RuntimeError):
    """A user-facing failure of ``ring-allreduce cluster`` (printed as one line, exit code 2)."""


def base_dir() -> str:
    return os.environ.get(ENV_DIR) or "/run/ring-allreduce-cluster"


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ClusterError(f"cluster name {name!r} must be 1-10 lowercase letters/digits starting with a letter "
                           "(it prefixes interface names, which Linux limits to 15 characters)")
    return name


def folder(name: str) -> str:
    return os.path.join(base_dir(), check_name(name))


def state_path(name: str) -> str:
    return os.path.join(folder(name), "state.json")


def plan(name: str, n_hosts: int, subnet: str, rates) -> dict:
    """The cluster's description before anything exists: host ``hI`` is namespace/veth ``<name>-hI``, hostname
    ``<name>-hI``, address ``subnet + 1 + I``; the bridge ``<name>-br`` holds ``subnet + 1``."""
    check_name(name)
    if not 1 <= n_hosts <= MAX_HOSTS:
        raise ClusterError(f"--hosts must be 1..{MAX_HOSTS}, got {n_hosts}")
    try:
        net = ipaddress.ip_network(subnet, strict=True)
    except ValueError as e:
        raise ClusterError(f"bad --subnet {subnet!r}: {e}") from None
    if net.version != 4 or not net.is_private or net.num_addresses < n_hosts + 4:
        raise ClusterError(f"--subnet {subnet} must be a private IPv4 network with room for {n_hosts} hosts "
                           "and a bridge (e.g. 10.201.77.0/24)")
    first = net.network_address + 1
    d = folder(name)
    hosts = []
    for i in range(1, n_hosts + 1):
        h = f"h{i}"
        hosts.append({"host": h, "hostname": f"{name}-{h}", "netns": f"{name}-{h}", "veth": f"{name}-{h}",
                      "addr": str(first + i), "rate": rates.get(h), "uts": os.path.join(d, f"{h}.uts"),
                      "link": "up"})
    return {"name": name, "subnet": str(net), "prefixlen": net.prefixlen, "bridge": f"{name}-br",
            "bridge_addr": str(first), "hosts": hosts, "agent": os.path.join(d, "agent.sh"), "ready": False}


def save(st: dict) -> None:
    write_json(state_path(st["name"]), st)


def load(name: str):
    """The state of cluster ``name``, or None if there is none."""
    path = state_path(name)
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ClusterError(f"cannot read the cluster state {path}: {e}; `ring-allreduce cluster down --name "
                           f"{name}` removes what the naming convention finds") from None


def require(name: str) -> dict:
    st = load(name)
    if st is None:
        raise ClusterError(f"no cluster named {name!r} is up (start one with `ring-allreduce cluster up --hosts N"
                           + ("" if name == DEFAULT_NAME else f" --name {name}") + "`)")
    if not st.get("ready"):
        raise ClusterError(f"cluster {name!r} was not fully brought up; run `ring-allreduce cluster down --name "
                           f"{name}` and `up` again")
    return st


def host(st: dict, which: str) -> dict:
    for h in st["hosts"]:
        if which in (h["host"], h["hostname"], h["addr"]):
            return h
    raise ClusterError(f"no host {which!r} in cluster {st['name']!r}; hosts: "
                       + ", ".join(h["host"] for h in st["hosts"]))


def names() -> list:
    """The clusters that have a state file."""
    try:
        return sorted(n for n in os.listdir(base_dir()) if os.path.exists(state_path(n)))
    except (FileNotFoundError, ClusterError):
        return []
