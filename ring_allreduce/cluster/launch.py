"""Run an MPI job across the emulated hosts with the installed MPI's own launcher, and supervise it.

Placement is by block: host ``h1`` gets ranks ``0..k1-1``, ``h2`` the next ``k2``, and so on. The launcher runs
in the root namespace and reaches the hosts through the cluster's agent (an ssh stand-in, see
:func:`.net._write_agent`): MPICH's hydra with ``-launcher ssh -launcher-exec AGENT -localhost <bridge>``, Open
MPI's ``prterun`` with ``plm_rsh_agent AGENT``. ``UCX_TLS=tcp`` (unless already set) makes UCX use the veths
between hosts: otherwise it finds the other hosts' processes on the same kernel and uses shared memory, and the
shaped links would carry nothing; ranks on one host still use MPI's own shared memory. The hosts share this
machine's cores, so ``RING_ALLREDUCE_NUMBA_THREADS`` and ``OMP_NUM_THREADS`` default to the cores divided by the
job's ranks (a host alone would give each rank all of them, and idle Numba/OpenMP threads that spin steal the
cores from the other hosts' ranks and from the kernel's TCP work: a torch step took 2x longer). ``GLOO_SOCKET_IFNAME``
defaults to the hosts' interface, for torch's Gloo.

Supervision: a rank that fails prints a line the launcher forwards (``ring-allreduce: rank ...``, ``MPI_Abort``);
then the launcher normally ends the job. When a host's link is down it cannot (its connection to that host's
proxy is cut), so once a failure line is seen and the launcher has not ended within ``grace`` seconds, every
process of the job is killed: the launcher's process group and, on every host, each process carrying this job's
``RING_ALLREDUCE_CLUSTER_JOB`` marker in its environment (the marker travels through the launcher, the agent and
the proxies to the ranks). Processes that are not part of the job (e.g. a slurmd) are left alone.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid

from . import net
from .state import ClusterError

JOB_ENV = "RING_ALLREDUCE_CLUSTER_JOB"
FAILURE = re.compile(r"ring-allreduce: rank \d+ (reports rank\(s\)|of \d+ failed)|MPI_Abort|MPI_ABORT|"
                     r"BAD TERMINATION|prterun has exited|exited on signal|noticed that process rank|"
                     r"\*\*\* An error occurred in")
#: who names the failed ranks in a failure line: the heartbeat names the ranks it lost; a rank that raised names
#: itself (but a survivor whose peer died may raise too); the launcher names the dead, and also the survivor that
#: called MPI_Abort. :func:`run` trusts, in this order (the first source that names anyone wins): heartbeat, raised,
#: Open MPI's peer host, ranks dead when a survivor reported its error, the first ranks seen dead (polled every
#: 20 ms; both kept to the hosts the launcher names among them), the launcher's rank (Open MPI: moved off the
#: hosts whose ranks reported a failed peer), its pid
_RANK_SOURCES = (
    (re.compile(r"reports rank\(s\) \[([\d, ]+)\]"),),
    (re.compile(r"rank (\d+) of \d+ failed"),),
    (re.compile(r"RANK (\d+) PID \d+ RUNNING AT"),  # hydra's BAD TERMINATION report
     re.compile(r"process rank (\d+) with PID")),  # prterun's "noticed that process rank N ..."
)
#: Open MPI: a survivor whose peer died prints the peer's host before aborting; names that host's ranks
_PEER_HOST = re.compile(r"Peer host:\s+(\S+)")
#: Open MPI: a survivor's error handler reports a failed peer (before prterun kills anyone): "[host:pid] *** ..."
_SURVIVOR = re.compile(r"\*\*\* An error occurred in")
_REPORTER = re.compile(r"^\[([^\]:]+):\d+\] \*\*\* An error occurred in")


_PF_EXITING = 0x4  # the kernel's task flag for a process in exit (set before its memory is released)


def gone(pid: int) -> bool:
    """Whether process ``pid`` has ended or is ending: no longer exists, is exiting (a killed process with much
    memory takes tens of ms to tear down: two ranks killed together would look a poll apart), or is a zombie its
    parent has not reaped."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return fields[0] == b"Z" or bool(int(fields[6]) & _PF_EXITING)
    except (OSError, IndexError, ValueError):
        return True


def dead_first(rank_of: dict) -> list:
    """Ranks already gone when a survivor reports its error, if some rank still runs (else nothing is known)."""
    dead = {r for pid, r in rank_of.items() if gone(pid)}
    return sorted(dead) if dead and dead != set(rank_of.values()) else []


def first_wave(died: dict, ranks) -> list:
    """The ranks seen gone at the earliest poll (``died``: rank -> time first seen gone), unless every rank of the
    job went at once (then nothing is known): a killed host's ranks die before the survivors that abort."""
    if not died:
        return []
    t = min(died.values())
    wave = {r for r, when in died.items() if when == t}
    return sorted(wave) if wave != set(ranks) else []


def on_named_hosts(ranks: list, named: list, place) -> list:
    """A time-ordered guess (``ranks`` dead first) that spans several hosts, kept to the hosts the launcher names
    in it, when it names some of them but not all: on a loaded machine one poll can see a killed host's ranks and
    a survivor the launcher already cleaned up go together (hydra names the first rank that died, by its pid)."""
    on = {r: h["host"] for h, rs in place for r in rs}
    hosts = {on[r] for r in ranks if r in on}
    keep = {on[r] for r in named if r in on} & hosts
    if len(hosts) < 2 or not keep or keep == hosts:
        return ranks
    return sorted(r for r in ranks if on.get(r) in keep)


def off_reporters(ranks: list, reporters: set, place) -> list:
    """Open MPI: the launcher names the survivor that called ``MPI_Abort``. When every rank it names is on a host
    whose ranks reported a failed peer, the failure is on the other hosts: their ranks (else ``ranks``)."""
    on = {r: h for h, rs in place for r in rs}
    names = {r: {on[r]["hostname"], on[r]["host"]} for r in on}
    if not ranks or not reporters or not all(names.get(r, set()) & reporters for r in ranks):
        return ranks
    others = [r for r in on if not names[r] & reporters]
    return sorted(others) if others else ranks


_PID = re.compile(r"PID (\d+) RUNNING AT|PID (\d+) on node")  # hydra / prterun name a dead rank by its pid


def scan_ranks(line: str, named: list) -> None:
    """Add the ranks a failure line names to ``named[i]``, ``i`` the index of its source in ``_RANK_SOURCES``."""
    for pats, into in zip(_RANK_SOURCES, named):
        for pat in pats:
            for m in pat.findall(line):
                into += [int(v) for v in m.split(",") if v.strip()]


def failed_ranks(named: list) -> list:
    """The ranks named by the most trusted source that names any."""
    return sorted(set(next((r for r in named if r), [])))


def parse_layout(spec, n_hosts: int, ranks_per_host=None) -> list:
    """Ranks per host: ``K`` on every host, or a layout ``"2+1"``/``"2,1"``/``"2x2"`` on the first hosts."""
    if spec is None:
        k = 1 if ranks_per_host is None else int(ranks_per_host)
        if k < 1:
            raise ClusterError(f"--ranks-per-host must be >= 1, got {k}")
        return [k] * n_hosts
    if ranks_per_host is not None:
        raise ClusterError("give --ranks-per-host or --layout, not both")
    s = str(spec).strip().lower()
    m = re.fullmatch(r"(\d+)x(\d+)", s)
    if m:
        sizes = [int(m.group(2))] * int(m.group(1))
    elif re.fullmatch(r"\d+([+,]\d+)*", s):
        sizes = [int(v) for v in re.split(r"[+,]", s)]
    else:
        raise ClusterError(f"cannot parse --layout {spec!r}; use e.g. 2+1 (2 ranks on h1, 1 on h2) or 2x2")
    if not sizes or min(sizes) < 1:
        raise ClusterError(f"--layout {spec!r}: every host needs at least one rank")
    if len(sizes) > n_hosts:
        raise ClusterError(f"--layout {spec!r} needs {len(sizes)} hosts; the cluster has {n_hosts}")
    return sizes


def placement(st: dict, sizes) -> list:
    """``[(host, [ranks])]`` by block."""
    out, r = [], 0
    for h, k in zip(st["hosts"], sizes):
        out.append((h, list(range(r, r + k))))
        r += k
    return out


def describe(place) -> str:
    n = sum(len(rs) for _, rs in place)
    parts = [f"{h['host']} ({h['hostname']}, {h['addr']}): rank{'s' if len(rs) > 1 else ''} "
             + (f"{rs[0]}-{rs[-1]}" if len(rs) > 1 else str(rs[0])) for h, rs in place]
    return f"{n} rank(s) on {len(place)} host(s), block placement: " + "; ".join(parts)


def flavour(mpiexec: str) -> str:
    try:
        out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ClusterError(f"cannot run {mpiexec} --version: {e}") from None
    if "Open MPI" in out or "OpenRTE" in out or "prte" in out.lower():
        return "openmpi"
    if "HYDRA" in out or "MPICH" in out:
        return "mpich"
    raise ClusterError(f"{mpiexec} is neither MPICH's hydra nor Open MPI's mpiexec; pass --mpiexec")


def launcher_argv(st: dict, place, mpi: str, mpiexec: str, cmd) -> list:
    """The launcher command line for ``cmd`` on the placement (MPICH hydra or Open MPI prterun)."""
    hosts = ",".join(f"{h['addr']}:{len(rs)}" for h, rs in place)
    n = str(sum(len(rs) for _, rs in place))
    if mpi == "mpich":
        return [mpiexec, "-localhost", st["bridge_addr"], "-launcher", "ssh", "-launcher-exec", st["agent"],
                "-hosts", hosts, "-n", n] + list(cmd)
    if mpi == "openmpi":
        argv = [mpiexec, "--prtemca", "plm_ssh_agent", st["agent"], "--prtemca", "oob_tcp_if_include", st["subnet"],
                "--mca", "btl_tcp_if_include", st["subnet"], "--host", hosts, "--map-by", "slot", "-n", n]
        if os.geteuid() == 0:
            argv.append("--allow-run-as-root")
        return argv + ["--oversubscribe"] + list(cmd)
    raise ClusterError(f"--mpi must be mpich or openmpi, not {mpi!r}")


class JobResult:
    """What :func:`run` saw: exit status, output (when captured), the failure line and what had to be killed."""

    __slots__ = ("returncode", "output", "placement", "failure", "failed_ranks", "failed_hosts", "killed",
                 "elapsed", "job")

    def __repr__(self) -> str:
        return (f"JobResult(returncode={self.returncode}, failure={self.failure!r}, failed_hosts="
                f"{self.failed_hosts}, killed={self.killed}, elapsed={self.elapsed:.1f})")


_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")


def job_pids(st: dict, job: str, ranks=None, exiting=None) -> dict:
    """``{host name: [pid, ...]}`` of the processes of job ``job`` still running on the hosts.

    ``ranks``: a dict that gains ``pid -> rank`` for each process that is an MPI rank (from its environment).
    ``exiting``: a set that gains the pids whose environment reads empty: processes in the middle of exiting (their
    memory, and so their environment, is released before they leave the host's network namespace).
    """
    found = {}
    for h in st["hosts"]:
        for pid in net.netns_pids(h["netns"]):
            env = net.environ(pid)
            if not env and exiting is not None:
                exiting.add(pid)
            if env.get(JOB_ENV) != job:
                continue
            found.setdefault(h["host"], []).append(pid)
            if ranks is not None:
                r = next((env[v] for v in _RANK_VARS if v in env), None)
                if r is not None and r.isdigit():
                    ranks[pid] = int(r)
    return found


def run(st: dict, cmd, sizes, mpi=None, mpiexec=None, env=None, timeout=None, grace=5.0, stream=None,
        capture=False) -> JobResult:
    """Launch ``cmd`` with ``sizes[i]`` ranks on host ``i``; forward its output to ``stream``; end it whole.

    ``timeout``: kill the job after this many seconds (None: never). ``grace``: seconds the launcher gets to end
    the job by itself after a failure line. ``capture``: keep the output in the result.
    """
    stream = stream if stream is not None else sys.stdout
    mpiexec = mpiexec or net.which("mpiexec")
    if mpiexec is None:
        raise ClusterError("no mpiexec on PATH (install the [mpich] or [openmpi] extra)")
    mpi = mpi or flavour(mpiexec)
    place = placement(st, sizes)
    job = f"{st['name']}-{uuid.uuid4().hex[:12]}"
    env = dict(os.environ if env is None else env)
    env.setdefault("UCX_TLS", "tcp")
    env.setdefault("GLOO_SOCKET_IFNAME", net.HOST_IFNAME)  # torch's Gloo: no resolver knows the hosts' names
    # the hosts share this machine's cores: each rank's kernels and BLAS get its share, not the whole machine
    share = str(max(1, (os.cpu_count() or 1) // sum(sizes)))
    for var in ("RING_ALLREDUCE_NUMBA_THREADS", "OMP_NUM_THREADS"):
        env.setdefault(var, share)
    env[JOB_ENV] = job
    argv = launcher_argv(st, place, mpi, mpiexec, cmd)
    res = JobResult()
    res.placement, res.job, res.output, res.killed = place, job, [] if capture else None, {}
    res.failure, res.failed_ranks = None, []
    named = [[] for _ in _RANK_SOURCES] + [[]]  # ranks per source (last: a dead rank's pid the launcher printed)
    peers = []  # ranks on a host a survivor named as its dead peer (trusted before the launcher's report)
    early = []  # ranks already dead when a survivor first reported its error (the launcher names the survivor)
    died = {}  # rank -> when it was first seen gone (polled while the job runs)
    reporters = set()  # hosts whose ranks reported a failed peer (Open MPI)
    stream.write(f"ring-allreduce cluster: {describe(place)}\n")
    stream.flush()
    t0 = time.monotonic()
    failed_at = []
    rank_of = {}  # pid -> rank
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                            errors="replace", bufsize=1, start_new_session=True)

    def pump():
        for line in proc.stdout:
            stream.write(line)
            stream.flush()
            if capture:
                res.output.append(line)
            if FAILURE.search(line):
                if not failed_at:
                    failed_at.append(time.monotonic())
                    res.failure = line.strip()
                scan_ranks(line, named)
            if _SURVIVOR.search(line) and not early:
                early.extend(dead_first(dict(rank_of)))
            m = _REPORTER.search(line.strip())
            if m:
                reporters.add(m.group(1))
            m = _PEER_HOST.search(line)
            if m:
                peers.extend(r for h, rs in place if m.group(1) in (h["hostname"], h["host"]) for r in rs)
            for m in _PID.finditer(line):
                pid = int(m.group(1) or m.group(2))
                if pid in rank_of:
                    named[-1].append(rank_of[pid])

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    why = None
    next_scan = 0.0
    try:
        while proc.poll() is None:
            now = time.monotonic()
            if now >= next_scan and not failed_at:  # which pid is which rank, to name a rank reported by pid
                job_pids(st, job, rank_of)
                next_scan = now + 0.5
            if len(died) < len(rank_of):  # the order ranks die in: a killed host's go first
                for pid, r in list(rank_of.items()):
                    if r not in died and gone(pid):
                        died[r] = now
            if failed_at and now - failed_at[0] > grace:
                why = f"the launcher did not end the job {grace:g} s after the failure"
                break
            if timeout is not None and now - t0 > timeout:
                why = f"the job ran past its {timeout:g} s time limit"
                if res.failure is None:
                    res.failure = why
                break
            time.sleep(0.02)
    except BaseException:
        why = "interrupted"
        raise
    finally:
        if why is not None:
            _kill_group(proc)
        proc.wait()
        reader.join(timeout=5)
        res.killed = _end_leftovers(st, job, quick=why is not None or proc.returncode != 0)
        res.elapsed = time.monotonic() - t0
        rc = proc.returncode
        res.returncode = rc if rc > 0 else 128 - rc if rc < 0 else (1 if why or res.killed else 0)
        heartbeat, raised, launcher, by_pid = named
        launcher = off_reporters(launcher, reporters, place)
        wave = first_wave(died, rank_of.values())
        early, wave = (on_named_hosts(g, launcher + by_pid, place) for g in (early, wave))
        ranks = failed_ranks([heartbeat, raised, peers, early, wave, launcher, by_pid])
        res.failed_ranks = ranks
        res.failed_hosts = sorted({h["host"] for h, rs in place if set(rs) & set(ranks)})
        if why is not None or res.killed or (res.returncode and res.failure):
            line = _report(res, why) + "\n"
            stream.write(line)
            stream.flush()
            if capture:
                res.output.append(line)
    return res


def _kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _end_leftovers(st: dict, job: str, quick: bool) -> dict:
    """Kill the job's processes still on the hosts (after a short wait when the job ended normally)."""
    deadline = time.monotonic() + (0.5 if quick else 3.0)
    left = job_pids(st, job)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = job_pids(st, job)
    killed = {}
    for _ in range(20):
        if not left:
            break
        for hostname, pids in left.items():
            net.kill_pids(pids)
            killed.setdefault(hostname, set()).update(pids)
        time.sleep(0.05)
        left = job_pids(st, job)
    # processes still exiting (ours, killed or ending by themselves) are on the hosts a little longer: return once
    # they are gone, so that the hosts are clean when the job is reported over (bounded: never wait on a stranger)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        exiting = set()
        if not job_pids(st, job, exiting=exiting) and not exiting:
            break
        time.sleep(0.02)
    return {h: sorted(p) for h, p in killed.items()}


def _report(res: JobResult, why) -> str:
    parts = ["ring-allreduce cluster: the job failed"]
    if res.failed_ranks:
        where = ", ".join(f"{h['host']} ({h['hostname']})" for h, rs in res.placement if set(rs) & set(res.failed_ranks))
        parts.append(f": rank(s) {res.failed_ranks} on host(s) {where}")
    if res.failure:
        parts.append(f" (first report: {res.failure[:200]})")
    if why:
        parts.append(f"; {why}")
    if res.killed:
        parts.append("; killed what remained: " + ", ".join(f"{len(p)} process(es) on {h}"
                                                           for h, p in sorted(res.killed.items())))
    return "".join(parts)
