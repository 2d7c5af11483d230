"""Compression on one process: each compressor's round trip within its stated bound, NumPy references,
settings validation, payload sizes, PowerSGD's plan and the ring allgather's analytical size.

Every test over compressors is parametrized over the compressor registry itself, and ``test_every_compressor_has_
a_bound`` fails when a new compressor arrives without a stated error bound here.
"""
import math

import numpy as np
import pytest

from ring_allreduce._registry import UnknownNameError
from ring_allreduce.compression import CompressionState, make, names
from ring_allreduce.compression.allgather import sent_bytes
from ring_allreduce.compression.base import Fields, Layout, rng_from_array, rng_to_array
from ring_allreduce.compression.memory import Residual
from ring_allreduce.compression.powersgd import gram_schmidt
from ring_allreduce.compression.routes import route_for

LAYOUT = Layout([(24, 16), (16,), (16, 10), (10,)])
N = LAYOUT.size


def roundtrip(comp, x, layout=LAYOUT):
    """What a p = 1 allreduce does: compress, advance through every round, decompress."""
    payload, ctx = comp.compress(x, layout)
    for _ in range(comp.rounds - 1):
        payload, ctx = comp.advance(payload.copy(), ctx)
    comp.after_reduce(payload, ctx)
    return comp.decompress(payload, ctx), payload


def sample(seed=0, n=N):
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def _bound_exact(x, y, comp):
    return np.array_equal(x, y)


def _bound_fp16(x, y, comp):
    return np.all(np.abs(y - x) <= 2.0 ** -11 * np.abs(x) + 2.0 ** -25)


def _bound_int8(x, y, comp):
    scale = np.float32(np.abs(x).max() / 127)
    return np.all(np.abs(y - x) <= scale / 2 * (1 + 1e-5) + 1e-7)


def _bound_qsgd(x, y, comp):
    c = comp.chunk
    norms = np.repeat([np.linalg.norm(x[i:i + c]) for i in range(0, x.size, c)], c)[:x.size]
    return np.all(np.abs(y - x) <= norms / comp.levels * (1 + 1e-5))


def _bound_randomk(x, y, comp):
    kept = y != 0
    k = math.ceil(comp.ratio * x.size)
    return kept.sum() == k and np.array_equal(y[kept], x[kept])


def _bound_topk(x, y, comp):
    kept = y != 0
    k = math.ceil(comp.ratio * x.size)
    return (kept.sum() == k and np.array_equal(y[kept], x[kept])
            and np.abs(x[~kept]).max() <= np.abs(x[kept]).min())


def _bound_sign(x, y, comp):
    ok = True
    for (_, t), (_, u) in zip(LAYOUT.tensors(x), LAYOUT.tensors(y)):
        ok &= np.allclose(np.abs(u), np.abs(t).mean(), rtol=1e-6) and np.array_equal(u < 0, t < 0)
    return ok


def _bound_powersgd(x, y, comp):
    # an exactly rank-r matrix is recovered by one power step; tensors too small to gain are sent as they are
    ok = True
    for (shape, t), (_, u) in zip(LAYOUT.tensors(x), LAYOUT.tensors(y)):
        ok &= np.allclose(u, t, rtol=1e-4, atol=1e-4 * np.abs(t).max())
    return ok


#: name -> (stated bound checked on decompress(compress(x)), input builder)
BOUNDS = {
    "none": _bound_exact, "fp16": _bound_fp16, "int8": _bound_int8, "qsgd": _bound_qsgd,
    "randomk": _bound_randomk, "topk": _bound_topk, "sign": _bound_sign, "powersgd": _bound_powersgd,
}


def low_rank_sample(r=2, seed=0):
    """A bucket whose matrices have rank <= r (what PowerSGD recovers exactly)."""
    rng = np.random.default_rng(seed)
    x = np.empty(N, np.float32)
    for shape, t in LAYOUT.tensors(x):
        if len(shape) == 2:
            t[:] = (rng.standard_normal((shape[0], r)) @ rng.standard_normal((r, shape[1]))).reshape(-1)
        else:
            t[:] = rng.standard_normal(t.size)
    return x


def test_every_compressor_has_a_bound():
    assert sorted(BOUNDS) == names()


@pytest.mark.parametrize("name", names())
def test_roundtrip_within_stated_bound(name):
    comp = make(name, min_compression_rate=1.0) if name == "powersgd" else make(name)
    x = low_rank_sample() if name == "powersgd" else sample(1)
    y, payload = roundtrip(comp, x)
    assert y.shape == x.shape and y.dtype == np.float32
    assert BOUNDS[name](x, y, comp), f"{name} round trip outside its stated bound"


@pytest.mark.parametrize("name", names())
def test_payload_size_matches_spec(name):
    comp = make(name)
    payload, ctx = comp.compress(sample(2), LAYOUT)
    spec = comp.payload_spec(LAYOUT)
    assert len(spec) == comp.rounds
    assert (payload.size, payload.dtype) == (spec[0][0], np.dtype(spec[0][1]))
    assert route_for(comp) == ("allreduce" if comp.summable else "allgather")
    if not comp.summable:
        assert payload.dtype == np.uint8  # fixed-size byte payloads go round the allgather


ONE_ROUND_SUMMABLE = [n for n in names() if make(n).summable and make(n).rounds == 1]


@pytest.mark.parametrize("name", ONE_ROUND_SUMMABLE)
def test_summable_payloads_add_up(name):
    """decompress(sum of payloads) == sum of decompressed payloads (PowerSGD's two rounds: across ranks)."""
    comp = make(name)
    a, b = sample(3), sample(4)
    pa, ctx = comp.compress(a, LAYOUT)
    if name == "randomk":  # same indices on every rank: replay the same generator state
        comp2 = make(name)
        pb, _ = comp2.compress(b, LAYOUT)
    else:
        pb, _ = comp.compress(b, LAYOUT)
    both = comp.decompress((pa.astype(np.float64) + pb).astype(pa.dtype), ctx)
    sep = comp.decompress(pa, ctx) + comp.decompress(pb, ctx)
    np.testing.assert_allclose(both, sep, rtol=2e-3 if name == "fp16" else 1e-6, atol=1e-6)


# -- against independent NumPy references -------------------------------------------------------------------------

def test_fp16_reference():
    x = sample(5) * 100
    y, payload = roundtrip(make("fp16"), x)
    np.testing.assert_array_equal(payload, x.astype(np.float16))
    np.testing.assert_array_equal(y, x.astype(np.float16).astype(np.float32))


def test_int8_reference():
    x = sample(6)
    scale = np.float32(np.abs(x).max() / np.float32(127))
    ref = np.clip(np.rint(x / scale), -127, 127) * scale
    y, _ = roundtrip(make("int8"), x)
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-7)


def test_topk_reference():
    x = sample(7)
    comp = make("topk", compression_ratio=0.05)
    k = math.ceil(0.05 * x.size)
    keep = np.argsort(-np.abs(x), kind="stable")[:k]
    ref = np.zeros_like(x)
    ref[keep] = x[keep]
    y, payload = roundtrip(comp, x)
    np.testing.assert_array_equal(y, ref)
    assert payload.nbytes == 8 * k


def test_sign_reference():
    x = sample(8)
    ref = np.empty_like(x)
    for (_, t), (_, r) in zip(LAYOUT.tensors(x), LAYOUT.tensors(ref)):
        r[:] = np.where(t < 0, -np.abs(t).mean(), np.abs(t).mean())
    y, payload = roundtrip(make("sign"), x)
    np.testing.assert_allclose(y, ref, rtol=1e-6)
    assert payload.nbytes == 4 * len(LAYOUT.shapes) + sum((math.prod(s) + 7) // 8 for s in LAYOUT.shapes)


def test_powersgd_reference():
    """One PowerSGD step equals P = MQ, P^ = qr(P), Q = M^T P^, M^ = P^ Q^T with the same initial Q."""
    x = sample(9)
    comp = make("powersgd", powersgd_rank=2, min_compression_rate=1.0)
    q0 = np.random.default_rng([0]).standard_normal((16, 2)).astype(np.float32)  # the compressor's seeded Q
    y, _ = roundtrip(comp, x)
    m = x[:24 * 16].reshape(24, 16)
    p_hat = np.linalg.qr(m @ q0)[0]
    ref = p_hat @ (m.T @ p_hat).T
    np.testing.assert_allclose(y[:24 * 16].reshape(24, 16), ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(y[384:400], x[384:400])  # the bias goes uncompressed


def test_powersgd_plan_follows_min_compression_rate():
    comp = make("powersgd", powersgd_rank=2)
    comp_list, unc = comp.plan(Layout([(64, 64), (64,), (8, 3)]))
    assert [(n, m, r) for _, n, m, r in comp_list] == [(64, 64, 2)]  # 64*64 > 2 * (64+64)*2
    assert [s for _, s in unc] == [64, 24]  # the bias and the matrix too small to gain
    assert comp.payload_spec(Layout([(64, 64), (64,), (8, 3)])) == [(64 + 24 + 128, np.float32), (128, np.float32)]


def test_powersgd_gram_schmidt_matches_qr_projection():
    p = np.random.default_rng(1).standard_normal((20, 3)).astype(np.float32)
    g = gram_schmidt(p.copy())
    np.testing.assert_allclose(g.T @ g, np.eye(3), atol=1e-5)
    q = np.linalg.qr(p)[0]
    np.testing.assert_allclose(g @ g.T, q @ q.T, atol=1e-5)


def test_powersgd_warm_start_converges_on_fixed_matrix():
    """Repeated power steps with warm start approach the best rank-r approximation of a fixed matrix."""
    rng = np.random.default_rng(3)
    u, _ = np.linalg.qr(rng.standard_normal((24, 24)))
    v, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    s = np.array([10, 5] + [0.5 ** k for k in range(14)], np.float64)
    m = (u[:, :16] * s) @ v.T
    x = np.zeros(N, np.float32)
    x[:384] = m.reshape(-1)
    comp = make("powersgd", powersgd_rank=2, min_compression_rate=1.0)
    for _ in range(10):
        y, _ = roundtrip(comp, x)
    best = (u[:, :2] * s[:2]) @ v[:, :2].T
    np.testing.assert_allclose(y[:384].reshape(24, 16), best, atol=1e-3)


def test_qsgd_is_unbiased():
    x = sample(10, 64)
    comp = make("qsgd", qsgd_levels=4, qsgd_chunk=64)
    lay = Layout([(64,)])
    mean = np.mean([roundtrip(comp, x, lay)[0] for _ in range(4000)], axis=0)
    # per element, the estimate's std is at most norm/s/2; 4000 draws: 5 sigma is norm/s/2*5/sqrt(4000)
    assert np.all(np.abs(mean - x) <= 5 * np.linalg.norm(x) / 4 / 2 / math.sqrt(4000))
    assert not np.allclose(mean, x, rtol=0, atol=1e-4)  # it is random: the test can see a wrong mean


def test_randomk_indices_agree_for_the_same_seed_and_differ_across_steps():
    x = sample(11)
    a, b = make("randomk", seed=(5, 0)), make("randomk", seed=(5, 0))
    ca = [a.compress(x, LAYOUT)[1][1] for _ in range(3)]
    cb = [b.compress(x, LAYOUT)[1][1] for _ in range(3)]
    for ia, ib in zip(ca, cb):
        np.testing.assert_array_equal(ia, ib)
    assert not np.array_equal(ca[0], ca[1])


# -- settings -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def comm():
    from mpi4py import MPI

    return MPI.COMM_SELF


def test_unknown_compressor_lists_valid_names(comm):
    with pytest.raises(UnknownNameError, match="valid names: .*powersgd.*topk"):
        CompressionState(comm, "zip")


@pytest.mark.parametrize("kwargs, match", [
    (dict(compressor="sign", ratio=0.01), "does not apply to compressor 'sign'"),
    (dict(compressor="topk", powersgd_rank=2), "only to powersgd"),
    (dict(compressor="topk", ratio=0.0), r"must be in \(0, 1\]"),
    (dict(compressor="topk", ratio=2), r"must be in \(0, 1\]"),
    (dict(compressor="none", error_feedback=True), "lossless"),
    (dict(compressor="powersgd", powersgd_rank=0), "rank must be an integer >= 1"),
    (dict(compressor="qsgd", qsgd_levels=300), "levels must be an integer in 1..127"),
    (dict(compressor="sign", compress_after_steps=-1), "compress_after_steps"),
    (dict(compressor="sign", kernels="fortran"), "valid names"),
    (dict(compressor="sign", algorithm="carrier_pigeon"), "valid names"),
])
def test_conflicting_settings_rejected(comm, kwargs, match):
    name = kwargs.pop("compressor")
    with pytest.raises(ValueError, match=match):
        CompressionState(comm, name, **kwargs)


def test_state_has_slots(comm):
    s = CompressionState(comm, "sign")
    with pytest.raises(AttributeError):
        s.typo_setting = 1
    assert s.error_feedback is True and CompressionState(comm, "none").error_feedback is False


def test_state_single_process_is_roundtrip(comm):
    s = CompressionState(comm, "topk", ratio=0.1, error_feedback=False)
    x = sample(12)
    y = s.reduce(x, key=0, layout=LAYOUT)
    ref, _ = roundtrip(make("topk", compression_ratio=0.1), x)
    np.testing.assert_array_equal(y, ref)
    assert s.stats["wire_bytes"] == 0 and s.summary()["compression_ratio"] == pytest.approx(
        4 * N / (8 * math.ceil(0.1 * N)))


# -- pieces -------------------------------------------------------------------------------------------------------

def test_layout_and_fields():
    assert LAYOUT.size == 24 * 16 + 16 + 160 + 10 and LAYOUT.offsets[:3] == [0, 384, 400]
    with pytest.raises(ValueError, match="hold 570 elements but the bucket has 5"):
        Layout.of(LAYOUT, 5)
    f = Fields([("scale", np.float32, 1), ("idx", np.int32, 3), ("b", np.uint8, 5)])
    payload, v = f.new()
    assert f.nbytes == 4 + 12 + 5 and payload.nbytes == f.nbytes
    v["idx"][:] = [1, 2, 3]
    assert f.views(payload)["idx"].tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="21 uint8 bytes"):
        f.views(payload[:-1])


def test_rng_state_roundtrip_through_uint8():
    a = np.random.default_rng(7)
    a.random(5)
    saved = rng_to_array(a)
    want = a.random(3)
    b = np.random.default_rng(0)
    rng_from_array(b, saved)
    np.testing.assert_array_equal(b.random(3), want)


def test_residual_memory_keeps_the_error():
    m = Residual()
    x = np.array([1.0, -2.0, 3.0], np.float32)
    c = m.compensate(x)
    m.update(c, np.array([0.0, -2.0, 0.0], np.float32))
    np.testing.assert_array_equal(m.residual, [1.0, 0.0, 3.0])
    np.testing.assert_array_equal(m.compensate(x), [2.0, -2.0, 6.0])


@pytest.mark.parametrize("p", [1, 2, 3, 5])
def test_allgather_sent_bytes(p):
    counts = [3, 0, 7, 1, 4][:p]
    for r in range(p):
        assert sent_bytes(r, p, counts) == (0 if p == 1 else sum(counts) - counts[(r + 1) % p])
