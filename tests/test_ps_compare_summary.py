"""benchmarks/ps_compare.py's summary over seeds (no cluster, no MPI: rows as the runs record them)."""
import math
import os
import runpy

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "ps_compare.py")


@pytest.fixture(scope="module")
def ps():
    return runpy.run_path(BENCH)


def row(mode, seed, ttt, epochs=None, step=0.05):
    return {"layout": "4x1", "task": "digits", "mode": mode, "straggle": True, "seed": seed,
            "time_to_target_s": ttt, "epochs_to_target": epochs, "median_step_s": step, "mean_step_s": step}


def test_ratios_pair_seeds_with_the_baseline_of_the_same_servers(ps):
    rows = [row("ps2-bsp", 0, 2.0, 2), row("ps2-bsp", 1, 4.0, 4), row("ps2-ssp3", 0, 1.0, 1), row("ps2-ssp3", 1, 4.0, 4),
            row("ps1-bsp", 0, 10.0, 10), row("ps1-bsp", 1, 10.0, 10)]
    got = {g["mode"]: g for g in ps["seed_summary"](rows)}
    assert got["ps2-ssp3"]["baseline"] == "ps2-bsp"
    assert got["ps2-ssp3"]["ratio_to_baseline"] == [0.5, 1.0]
    assert got["ps2-ssp3"]["median_ratio"] == 0.75
    assert got["ps2-ssp3"]["epochs_to_target"] == [1, 4]
    assert got["ps1-bsp"]["median_ratio"] == 1.0


def test_unreached_and_failed_runs_count_against_the_mode(ps):
    rows = [row("ps1-bsp", s, 2.0, 2) for s in range(3)]
    rows += [row("ps1-asp", 0, 1.0, 1), row("ps1-asp", 1, None, None),
             {"layout": "4x1", "task": "digits", "mode": "ps1-asp", "straggle": True, "seed": 2, "failed": "boom"}]
    g = {g["mode"]: g for g in ps["seed_summary"](rows)}["ps1-asp"]
    assert g["reached"] == 1 and g["failed"] == 1 and len(g["seeds"]) == 3
    assert g["median_time_to_target_s"] is None  # two of three never reached: the median is not a lucky seed's
    assert g["ratio_to_baseline"][0] == 0.5 and math.isinf(g["ratio_to_baseline"][1])
    assert math.isinf(g["median_ratio"])
    assert g["epochs_to_target"] == [1, None, None]
    assert g["median_step_s"] == 0.05  # over the runs that ran
    assert "1/3" in ps["fmt_summary"](g) and "1,-,-" in ps["fmt_summary"](g)
