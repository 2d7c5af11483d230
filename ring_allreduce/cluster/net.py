"""Hosts and links with plain ``ip``/``tc``/``unshare``/``nsenter``: create, change, inspect and remove them.

A host is a network namespace (``ip netns``, its veth's far end named ``eth0``, ``lo`` up) plus a persistent UTS
namespace (a bind-mounted ``unshare --uts=FILE``) holding its hostname, so every process started on the host sees
that hostname and MPI libraries treat the hosts as different nodes. Processes enter both with ``nsenter``
(:func:`enter_cmd`); ``ip netns exec`` is avoided because it remounts ``/sys``, which hides the cgroup tree from
daemons such as slurmd.
"""
from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import time

from . import shaping
from .state import ClusterError, folder, plan, save, state_path

HOST_IFNAME = "eth0"  # each host's end of its veth
TOOLS = ("ip", "tc", "nsenter", "unshare", "mount", "umount")
_SBIN = os.pathsep + "/usr/sbin:/sbin:/usr/local/sbin"


def which(name: str):
    return shutil.which(name) or shutil.which(name, path=os.environ.get("PATH", "") + _SBIN)


def preflight() -> None:
    """Raise :class:`ClusterError` naming what is missing: Linux, root (CAP_NET_ADMIN + CAP_SYS_ADMIN), tools."""
    if not os.path.isdir("/proc/self/ns"):
        raise ClusterError("the emulated cluster needs Linux network namespaces (/proc/self/ns is missing)")
    missing = [t for t in TOOLS if which(t) is None]
    if missing:
        raise ClusterError(f"the emulated cluster needs {', '.join(missing)} on PATH (Debian/Ubuntu: apt-get "
                           "install iproute2 util-linux)")
    if not _has_caps():
        raise ClusterError("the emulated cluster needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create network "
                           "namespaces and links; run it with sudo or as root")


def _has_caps() -> bool:
    if os.geteuid() == 0:
        return True
    try:
        with open("/proc/self/status") as fh:
            eff = next(int(ln.split()[1], 16) for ln in fh if ln.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        return False
    return bool(eff & (1 << 12)) and bool(eff & (1 << 21))  # CAP_NET_ADMIN, CAP_SYS_ADMIN


def sh(cmd, check=True) -> subprocess.CompletedProcess:
    """Run a system command; on failure raise :class:`ClusterError` with its stderr."""
    exe = which(cmd[0]) or cmd[0]
    proc = subprocess.run([exe] + list(cmd[1:]), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise ClusterError(f"`{' '.join(cmd)}` failed: {(proc.stderr or proc.stdout).strip()}")
    return proc


def enter_cmd(h: dict) -> list:
    """The command prefix that runs a program on host ``h`` (its network and UTS namespaces)."""
    return [which("nsenter") or "nsenter", f"--net=/run/netns/{h['netns']}", f"--uts={h['uts']}", "--"]


def _subnet_in_use(subnet: str) -> str:
    net = ipaddress.ip_network(subnet)
    for line in sh(["ip", "-4", "-o", "addr", "show"]).stdout.splitlines():
        parts = line.split()
        if "inet" in parts:
            iface = ipaddress.ip_interface(parts[parts.index("inet") + 1])
            if iface.network.overlaps(net):
                return f"interface {parts[1]} already has {iface}"
    for line in sh(["ip", "-4", "route", "show"]).stdout.splitlines():
        dest = line.split()[0]
        if dest != "default":
            try:
                if ipaddress.ip_network(dest, strict=False).overlaps(net):
                    return f"this machine already routes {dest} ({line.strip()})"
            except ValueError:
                pass
    return ""


def up(name: str, n_hosts: int, subnet: str, rates: dict) -> dict:
    """Create the bridge, the hosts and their shaped links; return the saved state."""
    preflight()
    if os.path.exists(state_path(name)):
        raise ClusterError(f"cluster {name!r} is already up (`ring-allreduce cluster status --name {name}`; "
                           f"`down --name {name}` removes it)")
    st = plan(name, n_hosts, subnet, rates)
    clash = _subnet_in_use(st["subnet"])
    if clash:
        raise ClusterError(f"subnet {st['subnet']} is not free: {clash}; choose another with --subnet")
    names_taken = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    for h in st["hosts"]:
        if h["netns"] in names_taken or os.path.exists(f"/sys/class/net/{h['veth']}"):
            raise ClusterError(f"{h['netns']} already exists (a cluster left without a state file?); run "
                               f"`ring-allreduce cluster down --name {name}` first")
    os.makedirs(folder(name), exist_ok=True)
    save(st)  # first, so that `down` can undo a half-made cluster
    try:
        br, plen = st["bridge"], st["prefixlen"]
        sh(["ip", "link", "add", br, "type", "bridge"])
        sh(["ip", "addr", "add", f"{st['bridge_addr']}/{plen}", "dev", br])
        sh(["ip", "link", "set", br, "up"])
        for h in st["hosts"]:
            ns = h["netns"]
            sh(["ip", "netns", "add", ns])
            sh(["ip", "link", "add", h["veth"], "type", "veth", "peer", "name", HOST_IFNAME, "netns", ns])
            sh(["ip", "link", "set", h["veth"], "master", br, "up"])
            sh(["ip", "-n", ns, "addr", "add", f"{h['addr']}/{plen}", "dev", HOST_IFNAME])
            sh(["ip", "-n", ns, "link", "set", HOST_IFNAME, "up"])
            sh(["ip", "-n", ns, "link", "set", "lo", "up"])
            with open(h["uts"], "w"):
                pass
            sh(["unshare", f"--uts={h['uts']}", "hostname", h["hostname"]])
            for cmd in shaping.shape_cmds(h["veth"], ns, HOST_IFNAME, h["rate"]):
                sh(cmd, check=h["rate"] is not None)
        _write_agent(st)
        st["ready"] = True
        save(st)
    except BaseException:
        down(name)
        raise
    return st


def _write_agent(st: dict) -> None:
    """Write the ssh stand-in MPI launchers call as ``AGENT [ssh options] HOST COMMAND...``."""
    cases = []
    for h in st["hosts"]:
        pre = " ".join(enter_cmd(h))
        cases.append(f"  {h['addr']}|{h['hostname']}|{h['host']}) enter='{pre}' ;;")
    text = "\n".join([
        "#!/bin/sh",
        f"# generated by `ring-allreduce cluster up --name {st['name']}`: run a command on an emulated host,",
        "# as ssh would run it on a remote one (used by mpiexec's launcher and by `cluster run`).",
        'while [ $# -gt 0 ]; do',
        '  case "$1" in -o|-p|-l|-i|-F) shift 2 ;; -*) shift ;; *) break ;; esac',
        'done',
        'host=$1; shift',
        'case "$host" in',
        *cases,
        f'  *) echo "ring-allreduce cluster {st["name"]}: no host $host" >&2; exit 255 ;;',
        'esac',
        'dir=$(pwd)',
        'exec $enter /bin/sh -c "cd \\"$dir\\" 2>/dev/null; $*"',
        "",
    ])
    path = st["agent"]
    with open(path, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o755)


def set_link(st: dict, h: dict, what: str) -> None:
    """``up``/``down`` the host's link (its bridge-side veth), or shape it to a rate."""
    if what in ("up", "down"):
        sh(["ip", "link", "set", h["veth"], what])
        if what == "up":  # addresses tried while the link was down are cached as unreachable: forget them
            sh(["ip", "-n", h["netns"], "neigh", "flush", "all"], check=False)
            sh(["ip", "neigh", "flush", "dev", st["bridge"]], check=False)
            for other in st["hosts"]:
                sh(["ip", "-n", other["netns"], "neigh", "flush", "to", h["addr"]], check=False)
        h["link"] = what
    else:
        bps = shaping.parse_rate(what)
        for cmd in shaping.shape_cmds(h["veth"], h["netns"], HOST_IFNAME, bps):
            sh(cmd, check=bps is not None)
        h["rate"] = bps
    save(st)


def counters(h: dict) -> dict:
    """Bytes the host sent and received over its link (counted at the bridge-side end of its veth)."""
    base = f"/sys/class/net/{h['veth']}/statistics/"
    out = {}
    for key, fname in (("sent", "rx_bytes"), ("received", "tx_bytes")):
        try:
            with open(base + fname) as fh:
                out[key] = int(fh.read())
        except OSError:
            out[key] = None
    return out


def netns_pids(netns: str) -> list:
    """Pids of every process in the network namespace ``netns`` (as ``ip netns pids``, without a subprocess)."""
    try:
        want = os.stat(f"/run/netns/{netns}")
    except OSError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                got = os.stat(f"/proc/{entry}/ns/net")
            except OSError:
                continue
            if got.st_ino == want.st_ino and got.st_dev == want.st_dev:
                pids.append(int(entry))
    return pids


def environ(pid: int) -> dict:
    """The environment of process ``pid`` ({} if it is gone)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            raw = fh.read()
    except OSError:
        return {}
    out = {}
    for item in raw.split(b"\0"):
        k, sep, v = item.partition(b"=")
        if sep:
            out[k.decode(errors="replace")] = v.decode(errors="replace")
    return out


def kill_pids(pids, sig=signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def down(name: str, st=None) -> list:
    """Remove cluster ``name``: its processes, namespaces, links, mounts and state (idempotent).

    Works from the state file, or from the naming convention when there is none. Returns what was removed.
    """
    from .state import load, plan as _plan

    st = st or load(name)
    if st is None:
        st = _plan(name, MAX_GUESS, "10.0.0.0/8", {})  # names only: addresses are not needed to remove things
    removed = []
    existing_ns = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    for h in st["hosts"]:
        if h["netns"] in existing_ns:
            pids = netns_pids(h["netns"])
            if pids:
                kill_pids(pids)
                removed.append(f"{len(pids)} process(es) on {h['host']}")
                time.sleep(0.05)
            sh(["ip", "netns", "del", h["netns"]], check=False)
            removed.append(f"namespace {h['netns']}")
        if os.path.exists(f"/sys/class/net/{h['veth']}"):
            sh(["ip", "link", "del", h["veth"]], check=False)
        if os.path.exists(h["uts"]):
            sh(["umount", h["uts"]], check=False)
            try:
                os.unlink(h["uts"])
            except OSError:
                pass
    if os.path.exists(f"/sys/class/net/{st['bridge']}"):
        sh(["ip", "link", "del", st["bridge"]], check=False)
        removed.append(f"bridge {st['bridge']}")
    d = folder(name)
    if os.path.isdir(d):
        shutil.rmtree(d, ignore_errors=True)
    return removed


MAX_GUESS = 64  # hosts guessed from the naming convention when no state file is left
