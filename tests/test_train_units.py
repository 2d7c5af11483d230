"""Trainer pieces without MPI: data order and shards, bucket plans, storage allocator, byte counting, schedule."""
import numpy as np
import pytest

from ring_allreduce.train import buckets, data, hooks, models
from ring_allreduce.train.optimizer import WarmupSchedule
from ring_allreduce.train.transport import buffer_nbytes


def test_epoch_order_depends_only_on_seed_and_epoch():
    a = data.epoch_order(3, 1, 100)
    assert np.array_equal(a, data.epoch_order(3, 1, 100))
    assert not np.array_equal(a, data.epoch_order(3, 2, 100))
    assert sorted(a.tolist()) == list(range(100))


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("n", [0, 1, 3, 7, 64])
def test_shards_partition_the_global_batch(size, n):
    gb = np.arange(100, 100 + n)
    parts = [data.shard(gb, r, size) for r in range(size)]
    assert np.array_equal(np.concatenate(parts) if parts else gb, gb)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_batches_cover_the_epoch_with_a_short_last_batch():
    bl = data.batches(np.arange(10), 4)
    assert [len(b) for b in bl] == [4, 4, 2]


def test_synthetic_rows_do_not_depend_on_who_asks():
    t = data.synthetic("classification", n_train=3000, n_test=10, n_in=8, n_out=3, seed=5)
    idx = np.array([2999, 5, 1024, 1023, 7])
    X, y = t.train.take(idx)
    t2 = data.synthetic("classification", n_train=3000, n_test=10, n_in=8, n_out=3, seed=5)
    for i, row in enumerate(idx):
        Xi, yi = t2.train.take([row])
        assert np.array_equal(Xi[0], X[i]) and yi[0] == y[i]
    r = data.synthetic("regression", n_train=50, n_test=10, n_in=4, n_out=2, seed=5)
    Xr, yr = r.train.take(np.arange(5))
    assert Xr.shape == (5, 4) and yr.shape == (5, 2) and yr.dtype == np.float32


def test_digits_split_is_fixed_and_standardised():
    t = data.digits()
    assert len(t.train) + len(t.test) == 1797 and t.n_in == 64 and t.n_out == 10
    assert abs(float(t.train.X.mean())) < 1e-3
    assert np.array_equal(t.test.y, data.digits().test.y)


def test_bucket_plan_keeps_parameters_whole_and_in_backward_order():
    net = models.mlp(100, [50], 10, kernel="numpy")  # W1 500, b1 10, W0 5000, b0 50 floats
    plan = buckets.plan_buckets(net.specs, 2000, 4)  # a bucket closes at >= 500 floats
    assert [p[2] for p in plan] == [("W1",), ("b1", "W0"), ("b0",)]
    assert plan[0][0] == 0 and plan[-1][1] == net.n_params
    assert all(a[1] == b[0] for a, b in zip(plan, plan[1:]))
    assert len(buckets.plan_buckets(net.specs, 0, 4)) == 1


def test_storage_uses_the_allocator_and_buckets_are_views():
    net = models.mlp(10, [6], 3, kernel="numpy")
    calls = []

    def alloc(n, dtype):
        calls.append((n, dtype))
        return np.ones(n, dtype=dtype)

    st = buckets.GradientStorage(net.specs, net.n_params, np.float32, bucket_mb=1e-5, alloc=alloc)
    assert calls == [(net.n_params, np.dtype(np.float32))]
    assert not st.flat.any()  # zeroed
    st.buckets[1].buffer[:] = 3
    assert st.flat[st.buckets[1].start] == 3
    with pytest.raises(ValueError, match="allocator returned"):
        buckets.GradientStorage(net.specs, net.n_params, np.float32, alloc=lambda n, dt: np.empty(n + 1, dt))


class _OneRank:
    def Get_size(self):
        return 1

    def Get_rank(self):
        return 0


@pytest.mark.parametrize("overlap", buckets.OVERLAP_MODES)
def test_exchange_calls_the_hook_once_per_bucket_in_order(overlap):
    net = models.mlp(10, [6, 5], 3, kernel="numpy")
    st = buckets.GradientStorage(net.specs, net.n_params, np.float32, bucket_mb=1e-6)
    seen = []

    def hook(state, bucket):
        seen.append(bucket.index)
        return bucket.buffer * 2  # a new array: the exchange copies it back

    ex = buckets.BucketExchange(st, hook, None, overlap)
    st.flat[:] = 1
    ex.begin()
    for b in st.buckets:
        ex.ready(b.stop)
    ex.finish()
    ex.close()
    assert seen == list(range(len(st.buckets)))
    assert (st.flat == 2).all() and len(ex.spans) == len(st.buckets)


def test_exchange_reports_a_failing_hook_from_the_thread():
    net = models.mlp(4, [3], 2, kernel="numpy")
    st = buckets.GradientStorage(net.specs, net.n_params, np.float32)

    def hook(state, bucket):
        raise ZeroDivisionError("boom")

    ex = buckets.BucketExchange(st, hook, None, "thread")
    ex.begin()
    with pytest.raises(RuntimeError, match="boom"):
        ex.finish()
    ex.close()
    with pytest.raises(ValueError, match="nonblocking"):
        buckets.BucketExchange(st, hook, None, "sometimes")


def test_default_hook_with_one_rank_leaves_the_bucket():
    b = hooks.Bucket(0, 0, 4, ("W0",), np.arange(4.0))
    st = hooks.AllreduceState(_OneRank(), "ring")
    assert hooks.allreduce_hook(st, b) is b.buffer and b.buffer.tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="ring"):
        hooks.AllreduceState(_OneRank(), "carrier-pigeon")


def test_buffer_nbytes_reads_mpi4py_specs():
    from mpi4py import MPI

    a = np.zeros(10, dtype=np.float32)
    assert buffer_nbytes(a) == 40
    assert buffer_nbytes([a, MPI.BYTE]) == 40
    assert buffer_nbytes([a, 3, MPI.FLOAT]) == 12
    assert buffer_nbytes(MPI.IN_PLACE) == 0


def test_warmup_then_cosine_schedule():
    s = WarmupSchedule(0.1, batch_size=256, ref_batch=64, warmup_steps=4, total_steps=12)
    assert s.target == pytest.approx(0.4)
    assert [round(s(t), 6) for t in range(4)] == [0.1, 0.2, 0.3, 0.4]
    assert s(4) == pytest.approx(0.4) and s(8) == pytest.approx(0.2) and s(12) == pytest.approx(0.0)
    assert WarmupSchedule(0.1, 64)(1000) == 0.1


@pytest.mark.parametrize("momentum,wd,scale", [(0.9, 1e-3, 1.0), (0.0, 0.0, 1.5), (0.5, 0.1, 0.25)])
def test_fused_numba_update_matches_the_numpy_update(momentum, wd, scale):
    from ring_allreduce.train.optimizer import DistributedOptimizer

    net = models.mlp(6, [5], 3, kernel="numpy", dtype=np.float64)
    results = []
    for update in ("numpy", "numba"):
        w = np.arange(net.n_params) / 7.0
        opt = DistributedOptimizer(_OneRank(), w, net.specs, lr=0.1, momentum=momentum, weight_decay=wd,
                                   overlap="none", update=update)
        for k in range(3):
            opt.grad[:] = np.sin(np.arange(net.n_params) + k)
            opt.step(scale)
        results.append((w.copy(), opt.velocity.copy(), opt.steps))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-13, atol=1e-15)
    if momentum:
        np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-13, atol=1e-15)
    assert results[0][2] == results[1][2] == 3
