"""benchmarks/train_profile.py's sorting of py-spy samples (no py-spy needed)."""
import os
import runpy

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "train_profile.py")


@pytest.fixture(scope="module")
def prof():
    return runpy.run_path(BENCH)


def test_the_innermost_package_frame_decides(prof):
    cat = prof["categorize"]
    loop = "<module> (ring_allreduce/__main__.py:3);fit (ring_allreduce/train/trainer.py:120)"
    assert cat(loop + ";loss_and_grad (ring_allreduce/train/models.py:125)") == "compute"
    # a bucket released from inside backward: the allreduce it starts is communication, not compute
    assert cat(loop + ";loss_and_grad (ring_allreduce/train/models.py:130);on_ready (ring_allreduce/train/"
               "buckets.py:80);steps (ring_allreduce/algorithms/ring.py:90)") == "communication"
    assert cat(loop + ";step (ring_allreduce/train/optimizer.py:160)") == "update"
    assert cat(loop + ";take (ring_allreduce/train/data.py:40)") == "data"
    assert cat(loop) == "trainer and other"


def test_summary_shares_add_up_and_weigh_by_count(prof):
    raw = ("a (ring_allreduce/train/models.py:1) 30\n"
           "a (ring_allreduce/plan.py:1) 10\n"
           "a (x.py:1) 0\n"
           "run (ring_allreduce/resilience/heartbeat.py:1);Condition.wait (threading.py:331) 99\n"
           "not a sample line\n")
    s = prof["summarize"](raw)
    assert s["samples"] == 40 and s["waiting_samples"] == 99
    assert s["compute"] == pytest.approx(0.75) and s["communication"] == pytest.approx(0.25)
    assert sum(s[c] for c in prof["CATEGORIES"]) == pytest.approx(1.0)
