"""``ring-allreduce cluster`` without touching the network: rates, layouts, plans, launcher lines, error lines."""
import os
import sys
import time

import pytest

from ring_allreduce.cluster import ClusterError, launch, net, shaping, state
from ring_allreduce.cluster import cli as ccli


@pytest.mark.parametrize("text,bps", [("1gbit", 10**9), ("200mbit", 200 * 10**6), ("2.5gbit", 25 * 10**8),
                                      ("100Mbit", 10**8), ("unlimited", None), (None, None)])
def test_rates_parse_and_print_back(text, bps):
    assert shaping.parse_rate(text) == bps
    if bps is not None:
        assert shaping.parse_rate(shaping.format_rate(bps)) == bps


@pytest.mark.parametrize("bad", ["fast", "1gb", "-1mbit", "0mbit", "10kbit", "1 gbps"])
def test_bad_rates_name_the_accepted_forms(bad):
    with pytest.raises(ClusterError, match="rate"):
        shaping.parse_rate(bad)


def test_both_directions_are_shaped_with_a_bucket_large_enough_for_gso():
    cmds = shaping.shape_cmds("c-h1", "c-h1", "eth0", 10**9)
    assert [c[:6] for c in cmds] == [["tc", "qdisc", "replace", "dev", "c-h1", "root"],
                                     ["tc", "-n", "c-h1", "qdisc", "replace", "dev"]]
    args = shaping.tbf_args(10**8)
    assert args[args.index("burst") + 1] == str(128 * 1024)  # at least two 64 KiB segments
    args = shaping.tbf_args(10 * 10**9)
    assert int(args[args.index("burst") + 1]) == 10 * 10**9 // 8 // 1000  # ~1 ms at high rates


def test_layouts_place_ranks_by_block():
    st = state.plan("c", 3, "10.250.1.0/24", {})
    assert launch.parse_layout(None, 3) == [1, 1, 1]
    assert launch.parse_layout(None, 3, ranks_per_host=2) == [2, 2, 2]
    assert launch.parse_layout("2+1", 3) == [2, 1]
    assert launch.parse_layout("2x2", 3) == [2, 2]
    place = launch.placement(st, [2, 1])
    assert [(h["host"], rs) for h, rs in place] == [("h1", [0, 1]), ("h2", [2])]
    assert "h1 (c-h1, 10.250.1.2): ranks 0-1; h2 (c-h2, 10.250.1.3): rank 2" in launch.describe(place)
    for bad, msg in (("2+1+1+1", "needs 4 hosts"), ("2+0", "at least one"), ("two", "cannot parse")):
        with pytest.raises(ClusterError, match=msg):
            launch.parse_layout(bad, 3)
    with pytest.raises(ClusterError, match="not both"):
        launch.parse_layout("2+1", 3, ranks_per_host=2)


def test_plan_names_and_addresses(tmp_path, monkeypatch):
    monkeypatch.setenv(state.ENV_DIR, str(tmp_path))
    st = state.plan("abc", 2, "10.250.2.0/24", {"h2": 10**8})
    assert st["bridge"] == "abc-br" and st["bridge_addr"] == "10.250.2.1"
    assert [(h["netns"], h["hostname"], h["addr"], h["rate"]) for h in st["hosts"]] == [
        ("abc-h1", "abc-h1", "10.250.2.2", None), ("abc-h2", "abc-h2", "10.250.2.3", 10**8)]
    assert st["hosts"][0]["uts"].startswith(str(tmp_path))
    for bad in ("Abc", "a-b", "abcdefghijk", "1a"):
        with pytest.raises(ClusterError, match="cluster name"):
            state.plan(bad, 2, "10.250.2.0/24", {})
    with pytest.raises(ClusterError, match="private IPv4"):
        state.plan("abc", 2, "8.8.8.0/24", {})
    with pytest.raises(ClusterError, match="room for 9 hosts"):
        state.plan("abc", 9, "10.250.2.0/29", {})


def test_launcher_lines_reach_the_hosts_through_the_agent():
    st = state.plan("c", 2, "10.250.3.0/24", {})
    place = launch.placement(st, [2, 2])
    argv = launch.launcher_argv(st, place, "mpich", "mpiexec", ["python", "x.py"])
    assert argv[:7] == ["mpiexec", "-localhost", "10.250.3.1", "-launcher", "ssh", "-launcher-exec", st["agent"]]
    assert argv[argv.index("-hosts") + 1] == "10.250.3.2:2,10.250.3.3:2" and argv[-2:] == ["python", "x.py"]
    argv = launch.launcher_argv(st, place, "openmpi", "mpiexec", ["python"])
    assert argv[argv.index("plm_ssh_agent") + 1] == st["agent"]
    assert argv[argv.index("--host") + 1] == "10.250.3.2:2,10.250.3.3:2"


def test_failure_lines_name_ranks():
    lines = ["ring-allreduce: rank 0 reports rank(s) [2, 3] failed: sent no heartbeat",
             "ring-allreduce: rank 1 of 4 failed, aborting the job:",
             "=   RANK 3 PID 77 RUNNING AT 10.0.0.3"]
    assert launch.FAILURE.search(lines[0]) and launch.FAILURE.search(lines[1])
    assert launch.FAILURE.search("=   BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES")
    named = [[] for _ in launch._RANK_SOURCES]
    for line in lines:
        launch.scan_ranks(line, named)
    assert named == [[2, 3], [1], [3]]
    assert launch.failed_ranks(named) == [2, 3]  # the heartbeat's report wins over a survivor that raised
    assert launch.failed_ranks([[], [1], [3]]) == [1]
    # Open MPI: prterun names the survivor that called MPI_Abort next to the dead rank; our own report wins
    named = [[] for _ in launch._RANK_SOURCES]
    for line in ["ring-allreduce: rank 0 reports rank(s) [2, 3] failed: sent no heartbeat",
                 "prterun noticed that process rank 1 with PID 4242 on node h1 exited on signal 6"]:
        launch.scan_ranks(line, named)
    assert launch.failed_ranks(named) == [2, 3]
    assert not launch.FAILURE.search("epoch 3/10 loss 0.1 test acc 97%")
    assert launch.FAILURE.search("[h1:00000] *** An error occurred in Socket closed")


def test_ranks_dead_before_the_first_report_are_named_only_while_some_rank_runs():
    """Open MPI's survivor reports a closed socket and calls abort; the launcher then names the survivor."""
    import subprocess

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        while not launch.gone(zombie.pid) and time.monotonic() < deadline:  # exited, not yet reaped
            time.sleep(0.05)
        assert launch.gone(zombie.pid) and launch.gone(dead.pid) and not launch.gone(live.pid)
        assert launch.dead_first({live.pid: 0, dead.pid: 2, zombie.pid: 3}) == [2, 3]
        assert launch.dead_first({dead.pid: 2, zombie.pid: 3}) == []  # all gone: the launcher ended them
        assert launch.dead_first({live.pid: 0}) == []
    finally:
        live.kill()
        live.wait()
        zombie.wait()


def test_the_first_wave_of_deaths_names_the_killed_ranks_unless_all_went_at_once():
    assert launch.first_wave({2: 1.00, 3: 1.00, 0: 1.04, 1: 1.04}, [0, 1, 2, 3]) == [2, 3]
    assert launch.first_wave({0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0}, [0, 1, 2, 3]) == []  # one poll saw all go
    assert launch.first_wave({}, [0, 1]) == []


def test_a_wave_across_hosts_is_kept_to_the_hosts_the_launcher_names():
    """CI: one late poll saw h2's killed ranks and h1's rank 1 (cleaned up by hydra) go together; hydra named
    the first rank that died (rank 3, by its pid): the wave keeps h2's ranks."""
    h1, h2, h3 = ({"host": f"h{i}", "hostname": f"c-h{i}"} for i in (1, 2, 3))
    place = [(h1, [0, 1]), (h2, [2, 3]), (h3, [4])]
    assert launch.on_named_hosts([1, 2, 3], [3], place) == [2, 3]
    assert launch.on_named_hosts([1, 2, 3, 4], [2, 4], place) == [2, 3, 4]
    assert launch.on_named_hosts([2, 3], [3], place) == [2, 3]  # one host: kept whole
    assert launch.on_named_hosts([1, 2, 3], [], place) == [1, 2, 3]  # the launcher named nobody
    assert launch.on_named_hosts([1, 2, 3], [4], place) == [1, 2, 3]  # named off the wave: nothing better
    assert launch.on_named_hosts([1, 2, 3], [0, 2], place) == [1, 2, 3]  # names every host of the wave
    assert launch.on_named_hosts([], [3], place) == []


def test_a_survivor_named_by_the_launcher_is_moved_to_the_other_hosts():
    """Open MPI's prterun names the survivor that called abort; its host's ranks reported the failed peer."""
    h1, h2 = {"host": "h1", "hostname": "c-h1"}, {"host": "h2", "hostname": "c-h2"}
    place = [(h1, [0, 1]), (h2, [2, 3])]
    assert launch.off_reporters([0], {"c-h1"}, place) == [2, 3]
    assert launch.off_reporters([2], {"c-h1"}, place) == [2]  # named off the reporters' hosts: kept
    assert launch.off_reporters([0], set(), place) == [0]  # no survivor reported: kept
    assert launch.off_reporters([0], {"c-h1", "c-h2"}, place) == [0]  # every host reported: nothing better
    assert launch._REPORTER.search("[c-h1:00000] *** An error occurred in Socket closed").group(1) == "c-h1"


@pytest.mark.parametrize("why", ["caps", "tool"])
def test_without_root_or_iproute2_one_error_line_and_exit_2(monkeypatch, capsys, why):
    if why == "caps":
        monkeypatch.setattr(os, "geteuid", lambda: 1000)
        monkeypatch.setattr(net, "_has_caps", lambda: False)
    else:
        real = net.which
        monkeypatch.setattr(net, "which", lambda name: None if name == "ip" else real(name))
    rc = ccli.main(["up", "--hosts", "2", "--name", "never"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("ring-allreduce: error: "), err
    assert ("needs root" in err[0]) if why == "caps" else ("needs ip" in err[0])


def test_status_of_a_cluster_that_is_not_up_says_how_to_start_one(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(state.ENV_DIR, str(tmp_path))
    monkeypatch.setattr(net, "preflight", lambda: None)
    assert ccli.main(["status", "--name", "nothere"]) == 2
    assert "cluster up --hosts N --name nothere" in capsys.readouterr().err


def test_the_job_is_over_only_once_its_exiting_processes_left_the_hosts(monkeypatch):
    """A process in the middle of exiting reads an empty environment but is still on its host: wait it out."""
    from ring_allreduce.cluster import launch

    st = {"hosts": [{"host": "h1", "netns": "ns1"}]}
    polls = {"n": 0}
    envs = {11: {launch.JOB_ENV: "j"}, 12: {}}  # 11: still running (killed below); 12: already exiting

    def netns_pids(ns):
        polls["n"] += 1
        return [pid for pid in envs if pid != 12 or polls["n"] < 8]  # 12 leaves after a few polls

    def kill_pids(pids, sig=None):
        for pid in pids:
            envs.pop(pid, None)

    monkeypatch.setattr(launch.net, "netns_pids", netns_pids)
    monkeypatch.setattr(launch.net, "environ", lambda pid: envs.get(pid, {}))
    monkeypatch.setattr(launch.net, "kill_pids", kill_pids)
    killed = launch._end_leftovers(st, "j", quick=True)
    assert killed == {"h1": [11]}
    assert polls["n"] >= 8  # returned only after the exiting process had gone
    envs[13] = {}  # a process that never leaves (not ours to kill): the wait is bounded
    t0 = time.monotonic()
    polls["n"] = 100
    envs.pop(12, None)
    assert launch._end_leftovers(st, "j", quick=True) == {}
    assert time.monotonic() - t0 < 3.5
