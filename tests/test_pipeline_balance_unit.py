"""Pure parts of load balancing and the pipeline: splits, smoothing, stage partition, spans and schedules."""
import numpy as np
import pytest

from ring_allreduce.balance.split import SpeedEstimate, bounds, split_counts
from ring_allreduce.pipeline.partition import (bubble_formula, flat_span, layer_costs, one_f_one_b, partition,
                                               schedule)


@pytest.mark.parametrize("n", [0, 1, 3, 7, 32, 1000])
@pytest.mark.parametrize("weights", [[1.0], [1, 1, 1], [3, 1, 3], [1, 2, 3, 4, 5], [1e-3, 1, 1]])
def test_split_counts_sum_and_proportion(n, weights):
    c = split_counts(n, weights)
    assert c.sum() == n and (c >= 0).all()
    if n >= len(weights):
        assert (c >= 1).all()
    exact = n * np.asarray(weights) / np.sum(weights)
    lifted = (exact < 1) & (c == 1)  # rows moved to keep every rank measured
    assert np.all(np.abs(c - exact)[~lifted] < 1 + lifted.sum()), (c, exact)
    assert bounds(c)[-1] == n and bounds(c)[0] == 0


def test_split_counts_equal_weights_is_the_equal_shard():
    from ring_allreduce.schedules import chunk_bounds

    for n in range(0, 20):
        for p in range(1, 6):
            assert np.diff(chunk_bounds(n, p)).tolist() == split_counts(n, [1.0] * p).tolist()


def test_split_counts_rejects_bad_weights():
    for w in ([0, 1], [-1, 1], [float("nan"), 1], []):
        with pytest.raises(ValueError):
            split_counts(4, w)


def test_speed_estimate_smooths_per_sample_time():
    e = SpeedEstimate(0.5)
    e.observe(0.0, 10)  # nothing measured
    e.observe(1.0, 0)  # no rows
    assert e.value is None
    e.observe(1.0, 10)
    e.observe(3.0, 10)
    assert e.value == pytest.approx(0.5 * 0.1 + 0.5 * 0.3)


def test_partition_is_contiguous_and_minimises_the_largest_stage():
    import itertools

    costs = [50, 10, 10, 30, 5, 40]
    for s in range(1, len(costs) + 1):
        parts = partition(costs, s)
        assert parts[0][0] == 0 and parts[-1][1] == len(costs) and all(a < b for a, b in parts)
        assert all(parts[i][1] == parts[i + 1][0] for i in range(s - 1))
        worst = max(sum(costs[a:b]) for a, b in parts)
        best = min(max(sum(costs[a:b]) for a, b in zip((0,) + cut, cut + (len(costs),)))
                   for cut in itertools.combinations(range(1, len(costs)), s - 1))
        assert worst == best
    with pytest.raises(ValueError):
        partition(costs, len(costs) + 1)


def test_flat_span_covers_each_stage_once():
    from ring_allreduce.train.models import Network

    net = Network([7, 6, 5, 4, 3], kernel="numpy")
    parts = partition(layer_costs(net.sizes), 3)
    spans = sorted((flat_span(net, lr) for lr in parts), key=lambda s: s.start)
    assert spans[0].start == 0 and spans[-1].stop == net.n_params
    assert all(spans[i].stop == spans[i + 1].start for i in range(len(spans) - 1))
    for a, b in parts:
        sp = flat_span(net, (a, b))
        names = {s.name for s in net.specs if sp.start <= s.offset < sp.stop}
        assert names == {f"{k}{i}" for i in range(a, b) for k in "Wb"}


@pytest.mark.parametrize("stages,micro", [(1, 1), (2, 1), (2, 4), (3, 2), (4, 8)])
def test_schedules_run_each_micro_batch_once_forward_before_backward(stages, micro):
    for name in ("gpipe", "1f1b"):
        for st in range(stages):
            order = schedule(name, st, stages, micro)
            assert sorted(order) == sorted([("F", m) for m in range(micro)] + [("B", m) for m in range(micro)])
            assert all(order.index(("F", m)) < order.index(("B", m)) for m in range(micro))
    # 1F1B keeps at most S - stage micro-batches in flight on a stage
    for st in range(stages):
        live = peak = 0
        for kind, _ in one_f_one_b(st, stages, micro):
            live += 1 if kind == "F" else -1
            peak = max(peak, live)
        assert peak <= min(stages - st, micro)
    assert bubble_formula(stages, micro) == (stages - 1) / (micro + stages - 1)


def test_host_straggle_spec_slows_every_rank_on_that_host():
    from ring_allreduce.resilience.straggle import Straggler, parse

    s = parse("host:node-b:3")
    assert (s.host, s.rank, s.factor, s.prob) == ("node-b", None, 3.0, 1.0) and str(s) == "host:node-b:3:1"
    naps = []
    for rank, host in enumerate(["node-a", "node-a", "node-b", "node-b"]):
        st = Straggler(["host:node-b:3"], rank, 4, floor_s=0.01, sleep=naps.append, host=host)
        st.after_compute(0, 0.0)
    assert naps == [pytest.approx(0.01), pytest.approx(0.01), pytest.approx(0.03), pytest.approx(0.03)]
    for bad in ("host::3", "host:n", "host:n:0.5", "host:n:2:7", "host:n:x"):
        with pytest.raises(ValueError, match="--straggle"):
            parse(bad)
