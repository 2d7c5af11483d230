"""The benchmark suite: size parsing, the alpha-beta-gamma fit, report writers, the tuner, and (mpi) a tiny sweep."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from ring_allreduce.bench import model, report, sweep, tune

ALPHA, BETA, GAMMA = 2.5e-6, 1.0e-10, 4.0e-11  # 2.5 us, 10 GB/s links, 25 GB/s reduction


def synthetic_rows(p, algorithms=("ring", "recursive_doubling", "tree", "rabenseifner"), noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for s in sweep.message_sizes(8, 64 << 20, 4, 4):
        for a in algorithms:
            ca, cb, cc = model.coefficients(a, p, s)
            t = (ca * ALPHA + cb * BETA + cc * GAMMA) * (1 + noise * rng.standard_normal())
            rows.append({"algorithm": a, "size_bytes": s, "count": s // 4, "dtype": "float32", "op": "sum",
                         "time_us": t * 1e6, "time_us_min": t * 1e6, "time_us_max": t * 1e6,
                         "algbw_GBps": s / t / 1e9, "busbw_GBps": s / t / 1e9 * 2 * (p - 1) / p, "wrong": 0})
    return rows


# ------------------------------------------------------------------------------------------------------- sizes

@pytest.mark.parametrize("text,value", [("8", 8), ("4K", 4096), ("4KiB", 4096), ("64M", 64 << 20), ("1G", 1 << 30),
                                        ("1.5K", 1536), ("16B", 16)])
def test_parse_size(text, value):
    assert sweep.parse_size(text) == value


@pytest.mark.parametrize("bad", ["x", "-4", "0.5", "4Q"])
def test_parse_size_rejects(bad):
    with pytest.raises(ValueError):
        sweep.parse_size(bad)


def test_message_sizes():
    assert sweep.message_sizes(8, 64, 2) == [8, 16, 32, 64]
    assert sweep.message_sizes(4 << 20, 64 << 20, 4) == [4 << 20, 16 << 20, 64 << 20]
    assert sweep.message_sizes(1, 10, 2, itemsize=4) == [4, 8]  # whole elements only
    with pytest.raises(ValueError):
        sweep.message_sizes(8, 64, 1)


# ------------------------------------------------------------------------------------------------------- model

@pytest.mark.parametrize("p", [2, 3, 4, 8])
def test_fit_recovers_alpha_beta_gamma(p):
    f = model.fit(synthetic_rows(p), p)
    assert f.alpha == pytest.approx(ALPHA, rel=1e-3)
    assert f.beta == pytest.approx(BETA, rel=1e-3)
    assert f.gamma == pytest.approx(GAMMA, rel=1e-3)
    for c in model.compare(synthetic_rows(p), f):
        assert c["ratio"] == pytest.approx(1.0, rel=1e-3)


def test_fit_tolerates_noise_and_fits_native_empirically():
    rows = synthetic_rows(2, noise=0.03, seed=3)
    native = [dict(r, algorithm="mpi", time_us=1.5 + r["size_bytes"] * 2e-4) for r in rows if r["algorithm"] == "ring"]
    f = model.fit(rows + native, 2)
    assert f.alpha == pytest.approx(ALPHA, rel=0.15)
    assert f.beta + f.gamma / 2 == pytest.approx(BETA + GAMMA / 2, rel=0.1)  # ring's per-byte cost at p=2
    a, b = f.empirical["mpi"]
    assert a == pytest.approx(1.5e-6, rel=1e-3) and b == pytest.approx(2e-10, rel=1e-3)


def test_crossover_matches_the_closed_form():
    p = 4
    rows = synthetic_rows(p, algorithms=("ring", "recursive_doubling"))
    f = model.fit(rows, p)
    # ring: 6a + 1.5nB + .75nG ; rd: 2a + 2nB + 2nG  ->  n* = 4a / (0.5B + 1.25G)
    expected = 4 * ALPHA / (0.5 * BETA + 1.25 * GAMMA)
    found = [c for c in model.crossovers(rows, f) if c["source"] == "model"]
    assert len(found) == 1 and found[0]["faster_below"] == "recursive_doubling"
    assert found[0]["size_bytes"] == pytest.approx(expected, rel=0.02)
    measured = [c for c in model.crossovers(rows, f) if c["source"] == "measured"]
    assert len(measured) == 1 and measured[0]["size_bytes"] == pytest.approx(expected, rel=0.5)
    text = model.format_report(f, model.compare(rows, f), model.crossovers(rows, f))
    assert "alpha" in text and "recursive_doubling vs ring" in text


# ------------------------------------------------------------------------------------------------------ report

def _meta():
    return {"tool": "ring-allreduce bench", "version": "0", "mode": "bandwidth", "mpi_library": "MPICH x",
            "mpi_version": "4.1", "mpi4py": "4", "thread_level": "multiple", "p": 2, "hosts": {"n0": 2},
            "dtype": "float32", "op": "sum", "iters": 3, "warmup": 1, "inplace": True, "check": True,
            "agreement_check": False, "timing": "t", "busbw": "b", "skipped": {"gloo": "torch not installed"}}


def test_json_roundtrip_has_exactly_the_schema(tmp_path):
    rows = synthetic_rows(2)[:6]
    rows[0] = dict(rows[0], extra="dropped")
    path = str(tmp_path / "sub" / "r.json")
    report.write_json(path, _meta(), rows)
    with open(path) as fh:
        doc = json.load(fh)
    assert set(doc) == {"meta", "rows"} and doc["meta"]["thread_level"] == "multiple"
    assert all(tuple(r) == sweep.ROW_FIELDS for r in doc["rows"])
    meta, back = report.read_json(path)
    assert back[1] == {k: rows[1][k] for k in sweep.ROW_FIELDS}
    assert not [n for n in os.listdir(tmp_path / "sub") if n.startswith(".tmp")]  # atomic: no leftovers


def test_read_json_rejects_other_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"meta": {}, "rows": [{"algorithm": "ring"}]}))
    with pytest.raises(ValueError, match="lacks"):
        report.read_json(str(bad))


def test_csv_and_table(tmp_path):
    rows = synthetic_rows(2)[:4]
    rows[1]["wrong"] = None
    path = str(tmp_path / "r.csv")
    report.write_csv(path, _meta(), rows)
    lines = open(path).read().splitlines()
    assert lines[0].split(",") == ["p", "inplace", "mode", "thread_level", *sweep.ROW_FIELDS]
    assert len(lines) == 5 and lines[2].endswith(",")  # unchecked -> empty #wrong
    text = report.format_table(_meta(), rows)
    assert "thread level multiple" in text and "p=2" in text and "skipped gloo: torch not installed" in text
    assert "N/A" in text and "# Avg bus bandwidth (GB/s): ring" in text
    avg = report.average_busbw(rows)
    assert avg["ring"] == pytest.approx(rows[0]["busbw_GBps"])


def test_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    from ring_allreduce.bench import plot

    path = plot.plot(str(tmp_path / "p.png"), _meta(), synthetic_rows(2))
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


# -------------------------------------------------------------------------------------------------------- tune

def _rows_for(times):
    """rows from {size: {algorithm: time_us}}"""
    return [{"algorithm": a, "size_bytes": s, "count": s // 4, "dtype": "float32", "op": "sum", "time_us": t,
             "time_us_min": t, "time_us_max": t, "algbw_GBps": 0, "busbw_GBps": 0, "wrong": None}
            for s, d in times.items() for a, t in d.items()]


def test_tune_rules_smooth_blips_and_skip_non_candidates():
    rows = _rows_for({8: {"mpi": 1.0, "recursive_doubling": 1.2, "auto": 0.5, "gloo": 0.1},
                      64: {"mpi": 2.0, "recursive_doubling": 1.5},
                      512: {"mpi": 2.9, "recursive_doubling": 3.0},  # a 3% blip: noise
                      4096: {"mpi": 9.0, "recursive_doubling": 4.0, "ring": 6.0},
                      1 << 20: {"ring": 100.0, "recursive_doubling": 300.0, "mpi": 150.0}})
    assert tune.rules_for(rows) == [{"max_bytes": 8, "algorithm": "mpi"},
                                    {"max_bytes": 4096, "algorithm": "recursive_doubling"},
                                    {"max_bytes": None, "algorithm": "ring"}]


def test_tune_writes_a_table_auto_loads_and_merges_rank_counts(tmp_path):
    from ring_allreduce.algorithms import auto

    path = str(tmp_path / "auto.json")
    rows2 = _rows_for({8: {"mpi": 1.0, "ring": 5.0}, 1 << 20: {"mpi": 9.0, "ring": 5.0}})
    rows4 = _rows_for({8: {"recursive_doubling": 1.0, "ring": 5.0}, 1 << 20: {"rabenseifner": 4.0, "ring": 5.0}})
    tune.write_table(path, 2, tune.rules_for(rows2), {"command": "c2"})
    table = tune.write_table(path, 4, tune.rules_for(rows4), {"command": "c4"})
    assert set(table["per_p"]) == {"2", "4"} and table["measured"]["2"]["command"] == "c2"
    loaded = auto.load_table(path)
    assert loaded["rules"] == table["rules"]
    try:
        auto.set_table(path)
        assert auto.select(8, 2, "float32") == "mpi"
        assert auto.select(1 << 20, 2, "float32") == "ring"
        assert auto.select(8, 3, "float32") == "recursive_doubling"  # p=3 uses the next measured p
        assert auto.select(1 << 20, 16, "float32") == "rabenseifner"  # beyond the largest: the largest's rules
        assert auto.select(1 << 20, 1, "float32") == "ring"
    finally:
        auto.set_table(None)


def test_shipped_table_is_valid_and_measured():
    from ring_allreduce.algorithms import auto, names

    table = auto.load_table()
    assert {r["algorithm"] for r in table["rules"]} <= set(names())
    assert table.get("measured"), "the shipped table records how it was measured"
    for note in table["measured"].values():
        assert "ring-allreduce bench" in note["command"] and note["date_utc"]


# --------------------------------------------------------------------------------------------------------- mpi

@pytest.fixture
def comm():
    from mpi4py import MPI

    return MPI.COMM_WORLD


@pytest.mark.mpi
@pytest.mark.parametrize("inplace", [True, False])
@pytest.mark.parametrize("dtype,op", [("float32", "sum"), ("int32", "avg"), ("float16", "avg"), ("float64", "max"),
                                      ("int64", "prod")])
def test_tiny_sweep_checks_every_algorithm(comm, inplace, dtype, op):
    from tests.mpi_util import all_ok

    algs = sweep.default_algorithms() + ["check", "auto+check"]
    cfg = sweep.Config(sizes=[8, 1000 * np.dtype(dtype).itemsize], algorithms=algs, dtype=dtype, op=op, iters=2,
                       warmup=1, inplace=inplace, check=True)
    rows = sweep.run(comm, cfg)
    all_ok(comm, len(rows) == 2 * len(algs), "row count")
    bad = [r for r in rows if r["algorithm"] != "check" and r["wrong"] != 0]
    all_ok(comm, not bad, f"#wrong: {bad}")
    all_ok(comm, all(tuple(r) == sweep.ROW_FIELDS for r in rows), "schema")
    all_ok(comm, all(r["time_us_min"] <= r["time_us"] <= r["time_us_max"] for r in rows), "time order")
    p = comm.Get_size()
    all_ok(comm, all(r["busbw_GBps"] == pytest.approx(r["algbw_GBps"] * 2 * (p - 1) / p) for r in rows), "busbw")
    same = comm.allgather(json.dumps(rows, sort_keys=True))
    all_ok(comm, all(s == same[0] for s in same), "rows identical on every rank")


@pytest.mark.mpi
def test_check_counts_wrong_elements(comm):
    """A deliberately wrong algorithm is caught: one wrong element per rank (p > 1 reaches the algorithm)."""
    from ring_allreduce import algorithms
    from ring_allreduce.algorithms.native import native
    from tests.mpi_util import all_ok

    def off_by_one(comm_, src, dst, op, kernel, div=None):
        native(comm_, src, dst, op, kernel, div)
        dst[0] += 1

    algorithms.register("test_off_by_one", off_by_one)
    try:
        for dtype in ("float32", "int32"):
            cfg = sweep.Config(sizes=[64], algorithms=["test_off_by_one"], dtype=dtype, iters=2, warmup=0, check=True)
            rows = sweep.run(comm, cfg)
            p = comm.Get_size()
            all_ok(comm, rows[0]["wrong"] == (p if p > 1 else 0), f"{dtype}: wrong={rows[0]['wrong']}")
    finally:
        algorithms.registry.unregister("test_off_by_one")


@pytest.mark.mpi
def test_cli_writes_json_csv_and_tunes(comm, tmp_path):
    from ring_allreduce.algorithms import auto
    from ring_allreduce.bench import cli
    from tests.mpi_util import all_ok

    folder = comm.bcast(str(tmp_path) if comm.Get_rank() == 0 else None)
    j, c, t = (os.path.join(folder, n) for n in ("b.json", "b.csv", "t.json"))
    rc = cli.main(["-b", "64", "-e", "4K", "-f", "8", "-n", "2", "-w", "1", "-c", "-q", "--out-of-place",
                   "--algorithms", "ring,auto,mpi", "--json", j, "--csv", c, "--model"])
    all_ok(comm, rc == 0, f"bench exit {rc}")
    if comm.Get_rank() == 0:
        meta, rows = report.read_json(j)
        assert meta["p"] == comm.Get_size() and meta["inplace"] is False and meta["check"] is True
        assert [r["size_bytes"] for r in rows if r["algorithm"] == "ring"] == [64, 512, 4096]
        assert "model" in meta and "alpha_us" in meta["model"]["fit"]
    rc = cli.main(["--tune", t, "-b", "8", "-e", "1K", "-f", "16", "-n", "2", "-w", "0", "--repeats", "2", "-q",
                   "--algorithms", "recursive_doubling,ring,mpi"])
    all_ok(comm, rc == 0, f"tune exit {rc}")
    table = auto.load_table(t)  # every rank reads what rank 0 wrote (after the CLI's final barrier)
    all_ok(comm, str(comm.Get_size()) in table["per_p"], "tuned p recorded")
    all_ok(comm, {r["algorithm"] for r in table["rules"]} <= {"recursive_doubling", "ring", "mpi"}, "candidates")


def test_gloo_rendezvous_address_without_a_resolvable_hostname(monkeypatch):
    """On the emulated cluster no resolver knows the hosts' names: rank 0 offers its interface's address."""
    import socket

    from ring_allreduce.bench import gloo

    assert gloo._interface_address("lo") == "127.0.0.1"

    def unknown(name):
        raise socket.gaierror("no such host")

    monkeypatch.setattr(socket, "gethostbyname", unknown)
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    assert gloo.host_address() == "127.0.0.1"
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "nosuch0")
    assert gloo.host_address() == socket.gethostname()  # nothing better known: the name, as before
