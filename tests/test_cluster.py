"""The ``cluster`` tier: real hosts (network + UTS namespaces on a bridge) on this machine, jobs across them.

Each test launches MPI jobs with ``ring-allreduce cluster run`` on a private cluster (its own name and subnet),
removed at the end of the module even when a test fails. Nothing here sets ``RING_ALLREDUCE_PRETEND_NODES``: the
node layout the algorithms see is the real one (ranks on different hosts have different hostnames and reach each
other only over the veths, ``UCX_TLS=tcp``). Skips with the reason without root, iproute2 or namespaces.

The same tests run with whichever MPI ``mpiexec`` on PATH belongs to (CI runs them with MPICH and Open MPI).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import threading
import time

import pytest

from tests.cluster_util import ROOT, job_env, processes_left, skip_reason, unique_cluster

_REASON = skip_reason()
pytestmark = [pytest.mark.cluster, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]

ALGORITHMS = ["ring", "tree", "recursive_doubling", "rabenseifner", "shm", "hierarchical", "auto", "mpi"]
LAYOUTS = {"2x1": [1, 1], "2x2": [2, 2], "3x1": [1, 1, 1], "2+1": [2, 1]}

# Every algorithm, int (exact vs MPI.Allreduce) and float (bound vs float64, bitwise identical on every rank),
# counts 0, 1, < p, non-divisible and large (past the size where `auto` goes node-aware), in and out of place,
# reusing the core test's check; plus the placement and the node layout the library detects.
ALLREDUCE_JOB = textwrap.dedent("""
    import json, sys
    import numpy as np
    from mpi4py import MPI
    from ring_allreduce import algorithm_names
    from ring_allreduce.shm import topology
    from ring_allreduce.shm.dispatch import route
    from tests.test_allreduce_mpi import check_one

    comm = MPI.COMM_WORLD
    rank, p = comm.Get_rank(), comm.Get_size()
    sizes, hostnames, algs = (json.loads(a) for a in sys.argv[1:4])
    problems = []
    host = next(i for i in range(len(sizes)) if rank < sum(sizes[:i + 1]))
    if MPI.Get_processor_name() != hostnames[host]:
        problems.append(f"rank {rank} runs on {MPI.Get_processor_name()}, expected {hostnames[host]} (block)")
    missing = sorted(set(algs) - set(algorithm_names()) - {"auto"})
    if missing:
        problems.append(f"algorithms not registered: {missing}")
    nodes = topology.node_count(comm)
    st = topology.state(comm)
    layout = {"node_count": nodes, "real_sizes": list(st.sizes or ()),
              "hierarchy_sizes": list(st.hierarchy(None).node_sizes),
              "known_sizes": list(topology.known_node_sizes(comm) or ()),
              "auto_route_1MiB": route(np.zeros(1 << 18, np.float32), None, comm)}
    for alg in [a for a in algs if a not in missing]:
        for dtype, ops in (("int32", ("sum", "max")), ("int64", ("prod",)), ("float32", ("sum",)),
                           ("float64", ("avg",))):
            for n in sorted({0, 1, max(p - 1, 1), 1001, 150_001}):
                for op in ops:
                    for inplace in ((False, True) if n == 1001 else (False,)):
                        try:
                            check_one(comm, alg, dtype, op, n, inplace)
                        except AssertionError as e:
                            problems.append(f"{alg} {dtype} {op} n={n} inplace={inplace}: {e}")
    every = comm.gather({"rank": rank, "problems": problems, "layout": layout}, root=0)
    if rank == 0:
        print("RESULT " + json.dumps(every), flush=True)
""")

SHARED_BUCKETS_JOB = textwrap.dedent("""
    import types
    import numpy as np
    from mpi4py import MPI
    from ring_allreduce.train import cli, plugins
    from tests.mpi_util import all_ok, assert_identical
    from tests.test_train_mpi import BASE, _run
    world = MPI.COMM_WORLD
    mods = plugins.discover()
    args = cli.parse(BASE + ["--batch-size", "7", "--shared-buckets", "--algorithm", "auto"], mods)
    setup = types.SimpleNamespace(comm=world, alloc=None, callbacks=[])
    plugins.call(mods, "before_build", args, setup)  # as `ring-allreduce train` does
    tr = cli.build(args, world, setup)
    res = tr.fit()
    extra = {k: v for d in plugins.call(mods, "report", args, tr, res) for k, v in (d or {}).items()}
    ref, _ = _run(BASE + ["--batch-size", "7"], MPI.COMM_SELF)
    assert_identical(world, tr.optimizer.params, "parameters")
    ok = np.allclose(tr.optimizer.params, ref.optimizer.params, rtol=1e-9, atol=1e-11)
    moved = not np.allclose(ref.optimizer.params, ref.model.init(0))
    all_ok(world, ok and moved and extra.get("shared_buckets") is True, "shared buckets across hosts = 1 process")
    if world.Get_rank() == 0:
        print("SHARED-BUCKETS OK", extra, flush=True)
""")


@pytest.fixture(scope="module")
def st():
    """A 3-host cluster for this module (unshaped links: correctness, not speed); always torn down."""
    from ring_allreduce import cluster

    state = unique_cluster(3)
    try:
        yield state
    finally:
        cluster.down(state["name"])
    assert cluster.load(state["name"]) is None


def _run(st, cmd, layout, **kw):
    from ring_allreduce import cluster

    kw.setdefault("timeout", 150)
    kw.setdefault("stream", open(os.devnull, "w"))
    return cluster.run(st, cmd, layout=layout, env=job_env(), capture=True, **kw)


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_algorithm_correct_and_identical_across_hosts(st, tmp_path, layout):
    sizes = LAYOUTS[layout]
    hostnames = [h["hostname"] for h in st["hosts"]]
    script = _write(tmp_path, "allreduce_job.py", ALLREDUCE_JOB)
    res = _run(st, [sys.executable, script, json.dumps(sizes), json.dumps(hostnames), json.dumps(ALGORITHMS)],
               layout)
    out = "".join(res.output)
    assert res.returncode == 0, out[-6000:]
    line = next((ln for ln in res.output if ln.startswith("RESULT ")), None)
    assert line is not None, out[-6000:]
    every = json.loads(line[len("RESULT "):])
    assert len(every) == sum(sizes)
    problems = [p for r in every for p in r["problems"]]
    assert not problems, "\n".join(problems[:20])
    want = "hierarchical" if len(sizes) > 1 and max(sizes) > 1 else None
    for r in every:  # the real layout, seen by the node-aware paths and by auto's router
        lay = r["layout"]
        assert lay["node_count"] == len(sizes), r
        assert lay["real_sizes"] == sizes and lay["hierarchy_sizes"] == sizes and lay["known_sizes"] == sizes, r
        assert lay["auto_route_1MiB"] == want, r
    assert processes_left(st) == {}


def test_trainer_across_hosts_equals_one_process(st):
    """The existing equivalence test (p ranks vs one process, float64), run at 2 hosts x 2 ranks."""
    cmd = [sys.executable, "-m", "pytest", "--with-mpi", "-q", "-p", "no:cacheprovider", "--timeout=120",
           "--timeout-method=thread", os.path.join(ROOT, "tests", "test_train_mpi.py"),
           "-k", "test_p_ranks_equal_one_rank and 7"]
    res = _run(st, cmd, "2x2")
    out = "".join(res.output)
    assert res.returncode == 0, out[-6000:]
    assert " passed" in out and " failed" not in out, out[-6000:]


def test_trainer_with_shared_buckets_across_hosts(st, tmp_path):
    script = _write(tmp_path, "shared_buckets_job.py", SHARED_BUCKETS_JOB)
    res = _run(st, [sys.executable, script], "2x2")
    out = "".join(res.output)
    assert res.returncode == 0 and "SHARED-BUCKETS OK" in out, out[-6000:]


@pytest.mark.parametrize("layout", ["2x2", "3x1"])
def test_backup_workers_across_hosts(st, tmp_path, layout):
    """The coordinator hears every host's READY (a wildcard receive lost them across hosts: stalled at step 0)."""
    out_json = str(tmp_path / "backup.json")
    res = _run(st, [sys.executable, "-m", "ring_allreduce", "train", "--epochs", "2", "--backup-workers", "1",
                    "--straggle", "2:5", "--compute-floor", "0.005", "--heartbeat-timeout", "20",
                    "--json", out_json], layout, timeout=90)
    out = "".join(res.output)
    assert res.returncode == 0, out[-6000:]
    with open(out_json) as fh:
        r = json.load(fh)
    assert r["params_identical"] and r["epochs_done"] == 2, out[-6000:]
    assert r["test_accuracy"] > 0.85, r["test_accuracy"]


# -- failures across hosts -------------------------------------------------------------------------------------
HB_TIMEOUT = 3.0
TRAIN = ["-m", "ring_allreduce", "train", "--epochs", "500", "--heartbeat-interval", "0.3",
         "--heartbeat-timeout", str(HB_TIMEOUT)]


class _Job:
    """Run a job in a thread, its output visible as it comes; lets the test act on the hosts while it runs."""

    def __init__(self, st, cmd, layout, **kw):
        self.res = None
        self.lines = []
        self.thread = threading.Thread(target=self._go, args=(st, cmd, layout), kwargs=kw, daemon=True)
        self.thread.start()

    def _go(self, st, cmd, layout, **kw):
        self.res = _run(st, cmd, layout, stream=self, **kw)

    def write(self, text):
        self.lines.append(text)

    def flush(self):
        pass

    def training(self, epochs=2):
        """True once rank 0 printed ``epochs`` epochs (heartbeats run; the link carries training traffic)."""
        return sum(ln.startswith("epoch ") for ln in self.lines) >= epochs

    def join(self, limit):
        self.thread.join(limit)
        assert not self.thread.is_alive(), f"the job did not end within {limit} s:\n{''.join(self.lines)[-4000:]}"
        return self.res


def _rank_pids(st, host):
    """Pids of the Python ranks on ``host`` (not the launcher's proxy)."""
    from ring_allreduce.cluster.net import netns_pids

    h = next(h for h in st["hosts"] if h["host"] == host)
    pids = []
    for pid in netns_pids(h["netns"]):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if b"ring_allreduce" in fh.read():
                    pids.append(pid)
        except OSError:
            pass
    return pids


def _wait_for(pred, limit):
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if pred():
            return True
        time.sleep(0.1)
    return False


def _alive(pids):
    return [p for p in pids if os.path.exists(f"/proc/{p}") and _state(p) != "Z"]


def _state(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_a_cut_link_ends_every_process_of_the_job(st):
    """h2's link goes down mid-training: rank 0 names h2's ranks after the heartbeat timeout; h2's ranks, cut
    off from the launcher, exit by themselves; `cluster run` kills the launcher stuck on the cut host."""
    from ring_allreduce import cluster

    grace = 6.0
    job = _Job(st, [sys.executable] + TRAIN, "2x2", grace=grace, timeout=120)
    try:
        assert _wait_for(job.training, 60), "".join(job.lines)[-4000:]
        cut_ranks = _rank_pids(st, "h2")
        t_cut = time.monotonic()
        cluster.set_link(st["name"], "h2", "down")
        gone = _wait_for(lambda: not _alive(cut_ranks), HB_TIMEOUT + 10)
        t_gone = time.monotonic() - t_cut
        res = job.join(HB_TIMEOUT + grace + 30)
        t_end = time.monotonic() - t_cut
    finally:
        cluster.set_link(st["name"], "h2", "up")
    out = "".join(res.output)
    assert gone, f"h2's ranks still ran {HB_TIMEOUT + 10:g} s after the cut\n{out[-4000:]}"
    assert t_gone < HB_TIMEOUT + 8, t_gone  # heartbeat timeout + MPI_Abort's 2 s grace + polling
    assert not set(cut_ranks) & set(p for ps in res.killed.values() for p in ps), "h2's ranks had to be killed"
    assert t_end < HB_TIMEOUT + grace + 10, f"job ended {t_end:.1f} s after the cut\n{out[-4000:]}"
    assert res.returncode != 0
    assert res.failed_hosts == ["h2"] and res.failed_ranks and set(res.failed_ranks) <= {2, 3}, out[-4000:]
    assert "on host(s) h2" in out and f"host {st['hosts'][1]['hostname']}" in out, out[-4000:]
    assert processes_left(st) == {}, "processes left on the hosts"


def test_killed_ranks_on_one_host_end_the_job(st):
    from ring_allreduce.cluster.net import kill_pids

    job = _Job(st, [sys.executable] + TRAIN, "2x2", grace=5.0, timeout=120)
    assert _wait_for(job.training, 60), "".join(job.lines)[-4000:]
    t_kill = time.monotonic()
    kill_pids(_rank_pids(st, "h2"), signal.SIGKILL)
    res = job.join(HB_TIMEOUT + 30)
    out = "".join(res.output)
    assert time.monotonic() - t_kill < HB_TIMEOUT + 10, out[-4000:]
    assert res.returncode != 0, out[-4000:]
    assert res.failed_hosts == ["h2"] and res.failed_ranks and set(res.failed_ranks) <= {2, 3}, out[-4000:]
    assert "on host(s) h2" in out, out[-4000:]
    assert processes_left(st) == {}, "processes left on the hosts"


def test_the_readme_commands_bring_up_run_reshape_and_remove_a_cluster(tmp_path):
    """``ring-allreduce cluster up / run / set-link / status / down`` as the README shows them (own name, subnet)."""
    import subprocess

    from ring_allreduce import cluster

    name, subnet = f"rar{os.getpid() % 10000}", f"10.{251 + os.getpid() % 4}.{os.getpid() % 250}.0/24"

    def ra(sub, *args):
        return subprocess.run([sys.executable, "-m", "ring_allreduce", "cluster", sub, "--name", name, *args],
                              capture_output=True, text=True, env=job_env(), timeout=120)

    try:
        up = ra("up", "--hosts", "2", "--link", "1gbit", "--subnet", subnet)
        assert up.returncode == 0, up.stdout + up.stderr
        job = _write(tmp_path, "names.py", "from mpi4py import MPI\n"
                     "names = MPI.COMM_WORLD.allgather(MPI.Get_processor_name())\n"
                     "print('HOSTS', len(set(names)), flush=True) if MPI.COMM_WORLD.rank == 0 else None\n")
        run = ra("run", "--ranks-per-host", "2", "--timeout", "60", "--", sys.executable, job)
        assert run.returncode == 0 and "HOSTS 2" in run.stdout, run.stdout + run.stderr
        assert "block placement" in run.stdout and "ranks 0-1" in run.stdout, run.stdout
        assert ra("set-link", "h2", "200mbit").returncode == 0
        status = ra("status", "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        assert "200" in status.stdout and "h2" in status.stdout, status.stdout
    finally:
        first = ra("down")
        again = ra("down")  # idempotent
    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    assert cluster.load(name) is None
