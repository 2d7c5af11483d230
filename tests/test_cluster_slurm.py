"""Multi-node Slurm on emulated hosts: a slurmd per host, slurmctld on the bridge, the sbatch scripts on 2 nodes.

slurmctld and munged run in the root namespace (slurmctld listens on the bridge address); each host runs its own
slurmd inside its network and UTS namespaces (entered with ``nsenter``: ``ip netns exec`` remounts /sys and
hides the cgroup tree from slurmd), named after the host's hostname, with per-node spool, pid and log files
(``%n``). munge's socket is a path, which processes in every network namespace reach. Jobs get ``UCX_TLS=tcp``
so ranks on different nodes talk over the veths. Needs what the ``cluster`` and ``slurm`` tiers need; skips with
the reason otherwise.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile

import pytest

from tests import test_slurm
from tests.cluster_util import ROOT, skip_reason, unique_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.slurm, pytest.mark.timeout(600)]


class MultiNode(test_slurm.Cluster):
    """munged + slurmctld here, one slurmd in each emulated host."""

    def __init__(self, folder, st):
        super().__init__(folder)
        self.st = st
        self.nodes = [h["hostname"] for h in st["hosts"]]

    def write_conf(self):
        super().write_conf()  # munge key, folders, the common settings; then the multi-node lines replace
        with open(self.conf) as fh:
            lines = [ln for ln in fh.read().splitlines()
                     if not ln.startswith(("SlurmctldHost=", "NodeName=", "SlurmdSpoolDir=", "SlurmdPidFile=",
                                           "SlurmdLogFile=", "PartitionName="))]
        host = socket.gethostname().split(".")[0]
        lines += [f"SlurmctldHost={host}({self.st['bridge_addr']})",  # must be this machine's hostname
                  f"SlurmdSpoolDir={self._path('spool-%n')}", f"SlurmdPidFile={self._path('slurmd-%n.pid')}",
                  f"SlurmdLogFile={self._path('slurmd-%n.log')}"]
        lines += [f"NodeName={h['hostname']} NodeAddr={h['addr']} CPUs={os.cpu_count() or 1} State=UNKNOWN"
                  for h in self.st["hosts"]]
        lines.append("PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
        for n in self.nodes:
            os.makedirs(self._path(f"spool-{n}"), exist_ok=True)
        with open(self.conf, "w") as fh:
            fh.write("\n".join(lines) + "\n")

    def start(self):
        from ring_allreduce.cluster.net import enter_cmd

        self.write_conf()
        self._start("munged", ["-F", "-f", f"--socket={self._path('munge.sock')}",
                               f"--key-file={self._path('munge.key')}", f"--pid-file={self._path('munged.pid')}",
                               f"--log-file={self._path('munged.log')}", f"--seed-file={self._path('munged.seed')}"])
        self._wait(lambda: os.path.exists(self._path("munge.sock")), 10, "munged did not create its socket")
        self._start("slurmctld", ["-D", "-f", self.conf])
        for h in self.st["hosts"]:
            self._start_in(h["hostname"], enter_cmd(h) + [test_slurm._which("slurmd"), "-D", "-f", self.conf,
                                                          "-N", h["hostname"]])
        self._wait(lambda: self.run(["sinfo", "-h", "-N", "-o", "%T"], check=False).stdout.split().count("idle")
                   == len(self.nodes), 90, "the nodes did not become idle")

    def _start_in(self, label, argv):
        import subprocess

        log = open(self._path(f"slurmd-{label}.out"), "w")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        log.close()
        self.procs.append((f"slurmd {label}", p))

    def logs(self) -> str:
        text = [super().logs()]
        for n in self.nodes:
            for name in (f"slurmd-{n}.log", f"slurmd-{n}.out"):
                path = self._path(name)
                if os.path.exists(path):
                    with open(path, errors="replace") as fh:
                        text.append(f"--- {name}\n{fh.read()[-2000:]}")
        return "\n".join(text)


@pytest.fixture(scope="module")
def slurm2():
    reason = skip_reason() or test_slurm._skip_reason()
    if reason:
        pytest.skip(reason)
    if test_slurm._mpi_flavour() != "mpich":
        pytest.skip("srun --mpi=pmi2 and hydra's Slurm bootstrap are MPICH's; Open MPI 5 needs PMIx, which "
                    "Debian's Slurm cannot load here")
    from ring_allreduce import cluster

    st = unique_cluster(2)
    folder = tempfile.mkdtemp(prefix="ra-slurm2-")  # short: the munge socket path must fit in 108 bytes
    c = MultiNode(folder, st)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        cluster.down(st["name"])
        shutil.rmtree(folder, ignore_errors=True)


def _env(tmp_path):
    env = test_slurm._job_env(str(tmp_path / "results"))
    env["UCX_TLS"] = "tcp"  # between nodes over the veths (UCX would otherwise find the same kernel's memory)
    return env


def _hosts_line(text):
    m = re.search(r"^# p=(\d+) hosts: (.*)$", text, re.M)
    assert m, text[-2000:]
    return int(m.group(1)), m.group(2)


def _wait(slurm2, job, tmp_path, prefix):
    try:
        return slurm2.wait_job(job, timeout=120)
    except AssertionError as e:  # add what the job printed so far
        raise AssertionError(f"{e}\n--- job output\n{test_slurm._job_output(slurm2, job, tmp_path, prefix)}") from None


SBATCH = ["--nodes=2", "--ntasks=4", "--ntasks-per-node=2"]  # --ntasks too: the scripts default to --ntasks=2


@pytest.mark.parametrize("launcher", ["srun", "mpiexec"])
def test_bench_sbatch_on_two_nodes(slurm2, tmp_path, launcher):
    """slurm/bench.sbatch at 2 nodes x 2 tasks: checked rows, ranks on both nodes (srun --mpi=pmi2 / mpiexec)."""
    if launcher == "srun" and test_slurm.srun_mpi_problem(slurm2):
        pytest.skip(test_slurm.srun_mpi_problem(slurm2))
    env = _env(tmp_path)
    if launcher == "mpiexec":  # hydra's proxies connect back to the address of this interface (every host has one)
        env["HYDRA_IFACE"] = "eth0"
    env.update(RA_LAUNCHER=launcher, RA_LATENCY_ARGS="none",
               RA_BENCH_ARGS="-b 4K -e 1M -f 16 -n 3 -w 1 -c --algorithms ring,hierarchical,auto,mpi")
    job = slurm2.submit(os.path.join(ROOT, "slurm", "bench.sbatch"), env, SBATCH + [f"--job-name=ra-b-{launcher}"],
                        cwd=str(tmp_path))
    state = _wait(slurm2, job, tmp_path, f"ra-b-{launcher}")
    out = test_slurm._job_output(slurm2, job, tmp_path, f"ra-b-{launcher}")
    assert state == "COMPLETED", f"job {job}: {state}\n{out}\n{slurm2.logs()}"
    folder = tmp_path / "results" / f"ra-b-{launcher}-{job}"
    _, rows = test_slurm._check_bench_json(folder / "bench.json", 4, ["ring", "hierarchical", "auto", "mpi"])
    assert all(r["wrong"] == 0 for r in rows), [r for r in rows if r["wrong"]]
    p, hosts = _hosts_line((folder / "bench.txt").read_text())
    assert p == 4 and all(f"{n} (2 ranks)" in hosts for n in slurm2.nodes), hosts


def test_train_sbatch_on_two_nodes(slurm2, tmp_path):
    if test_slurm.srun_mpi_problem(slurm2):  # train.sbatch launches with srun
        pytest.skip(test_slurm.srun_mpi_problem(slurm2))
    env = _env(tmp_path)
    env.update(RA_EPOCHS="2", RA_TRAIN_ARGS="--quiet")
    job = slurm2.submit(os.path.join(ROOT, "slurm", "train.sbatch"), env, SBATCH, cwd=str(tmp_path))
    state = _wait(slurm2, job, tmp_path, "ra-train")
    out = test_slurm._job_output(slurm2, job, tmp_path, "ra-train")
    assert state == "COMPLETED", f"job {job}: {state}\n{out}\n{slurm2.logs()}"
    folder = tmp_path / "results" / f"ra-train-{job}"
    import json

    with open(folder / "train.json") as fh:
        result = json.load(fh)
    assert result["params_identical"] is True
    info = (folder / "info.txt").read_text()
    assert all(n in info for n in slurm2.nodes), info  # `ring-allreduce info` lists the ranks' hosts
