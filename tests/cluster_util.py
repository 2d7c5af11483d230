"""Helpers for the ``cluster`` tier: why it cannot run here, and a private emulated cluster per test module."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def skip_reason(mpiexec=None):
    """Why emulated hosts cannot be made here (None when they can)."""
    if not sys.platform.startswith("linux"):
        return "the emulated cluster needs Linux network namespaces"
    from ring_allreduce.cluster import ClusterError
    from ring_allreduce.cluster.net import preflight, which

    try:
        preflight()
    except ClusterError as e:
        return str(e)
    probe = subprocess.run([which("unshare"), "--net", "--uts", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create network namespaces here: {probe.stderr.strip()}"
    if (mpiexec or shutil.which("mpiexec")) is None:
        return "no mpiexec on PATH (install the [mpich] or [openmpi] extra)"
    return None


def job_env() -> dict:
    """The environment for a job: this checkout importable, nothing inherited from an enclosing MPI job."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMI_", "PMIX_", "OMPI_", "HYDRA_", "MPIR_", "PRTE_", "SLURM_", "PYTEST_"))}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")  # Open MPI ranks busy-poll; tests oversubscribe the cores
    if os.geteuid() == 0:  # Open MPI refuses root without these (MPICH ignores them)
        env["OMPI_ALLOW_RUN_AS_ROOT"] = env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    return env


_made = []


def unique_cluster(hosts: int, link=None):
    """Bring up a cluster with a name and subnet of its own (this process's pid and a counter, so no two clusters
    of one run, nor of two runs at once, share either); returns its state."""
    from ring_allreduce import cluster
    from ring_allreduce.cluster import ClusterError

    _made.append(hosts)
    pid = os.getpid() + 1009 * len(_made)
    last = None
    for attempt in range(8):
        n = (pid + attempt * 7919) % 60000
        name = f"rat{n}"
        subnet = f"10.{210 + n % 40}.{(n // 40) % 250}.0/24"
        try:
            return cluster.up(name, hosts=hosts, link=link, subnet=subnet)
        except ClusterError as e:  # that subnet or name is taken (up undoes a half-made cluster): another one
            last = e
    raise last


def processes_left(st) -> dict:
    """``{host: [pid, ...]}`` of every process still inside the cluster's hosts."""
    from ring_allreduce.cluster.net import netns_pids

    out = {}
    for h in st["hosts"]:
        pids = netns_pids(h["netns"])
        if pids:
            out[h["host"]] = pids
    return out
