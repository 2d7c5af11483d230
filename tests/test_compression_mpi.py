"""Compressed allreduce across ranks (run under ``mpiexec -n N``, N = 1..5), parametrized over the registry.

- the result equals decompress(sum) of what each rank sent, and is bit-identical on every rank;
- the bytes counted at the transport equal the analytical payload size;
- error feedback conserves the signal: sum of outputs + mean residual == sum of mean inputs;
- a state restored from ``gather_state_dict`` continues exactly like the original;
- ranks with conflicting settings all raise the same error.
"""
import numpy as np
import pytest

from ring_allreduce.compression import CompressionState, make, names
from ring_allreduce.compression.allgather import ring_allgather, sent_bytes
from ring_allreduce.compression.base import Layout
from ring_allreduce.compression.routes import registry as routes
from ring_allreduce.compression.routes import route_for
from ring_allreduce.compression.wire import counting
from ring_allreduce.errors import MismatchError
from tests.mpi_util import all_ok, assert_identical

pytestmark = pytest.mark.mpi
LAYOUT = Layout([(40, 24), (24,), (24, 10), (10,)])
N = LAYOUT.size


@pytest.fixture(scope="module")
def comm():
    from mpi4py import MPI

    return MPI.COMM_WORLD


def grad(rank, step=0, seed=0):
    return np.random.default_rng([seed, rank, step]).standard_normal(N).astype(np.float32)


def _run(fn):
    """Run ``fn`` and return ``(True, result)`` or ``(False, error text)`` so every rank can fail together."""
    try:
        return True, fn()
    except Exception as e:  # noqa: BLE001 - reported through all_ok on every rank
        return False, f"{type(e).__name__}: {e}"


@pytest.mark.parametrize("name", names())
def test_result_is_decompressed_sum_of_payloads(comm, name):
    comp = make(name, seed=(3, 0), comm_rank=comm.rank)
    wire = counting(comm)
    out, payload, ctx = routes.get(route_for(comp))(wire, comp, grad(comm.rank), LAYOUT, "ring", {})
    sent = comm.allgather(payload)
    if comp.summable:
        # the hand-written ring sums in its own order: compare with a float64 sum within the dtype's rounding
        total = np.sum([s.astype(np.float64) for s in sent], axis=0)
        ref = comp.decompress(total.astype(payload.dtype), ctx)
        eps = np.finfo(payload.dtype).eps
        tol = comm.size * eps * np.sum([np.abs(s.astype(np.float64)) for s in sent], axis=0).max() * 4
        ok = np.allclose(out, ref, rtol=0, atol=max(tol, 1e-6) * max(1.0, np.abs(ref).max()))
    else:
        ref = comp.decompress(sent[0], ctx)
        for s in sent[1:]:
            comp.decompress(s, ctx, ref, add=True)
        ok = np.array_equal(out, ref)  # the same decode, the same order: identical bytes
    all_ok(comm, ok, f"{name}: result vs decompress(sum of payloads)")
    assert_identical(comm, out, f"{name} result")


@pytest.mark.parametrize("name", names())
def test_wire_bytes_equal_analytical_size(comm, name):
    state = CompressionState(comm, name, algorithm="ring", seed=1)
    for step in range(2):
        state.reduce(grad(comm.rank, step), key="b0", layout=LAYOUT)
        state.end_step()
    measured = state.wire.sent_bytes
    expected = 2 * state.expected_wire_bytes("b0")
    comp = make(name)
    p = comm.size
    if comp.summable:
        from ring_allreduce.compression.wire import ring_allreduce_bytes

        by_spec = sum(ring_allreduce_bytes(comm.rank, p, c, np.dtype(d).itemsize) for c, d in comp.payload_spec(LAYOUT))
    else:
        by_spec = (p - 1) * comp.payload_nbytes(LAYOUT)
    all_ok(comm, measured == expected == 2 * by_spec, f"{name}: measured {measured} vs analytical {expected}")
    summary = state.summary()
    all_ok(comm, summary["wire_bytes_per_step"] == measured / 2, "per-step bytes")
    if p > 1:
        from ring_allreduce.compression.wire import ring_allreduce_bytes

        fp32 = 2 * ring_allreduce_bytes(comm.rank, p, N, 4)
        all_ok(comm, summary["wire_ratio_vs_fp32_ring"] == fp32 / measured, "ratio against the fp32 ring")
    all_ok(comm, summary["compression_ratio"] == 4 * N / comp.payload_nbytes(LAYOUT), "payload ratio")


@pytest.mark.parametrize("name", [n for n in names() if n != "none"])
def test_error_feedback_conserves_signal(comm, name):
    state = CompressionState(comm, name, error_feedback=True, seed=2)
    steps = 4
    total_out = np.zeros(N, np.float64)
    total_in = np.zeros(N, np.float64)
    for t in range(steps):
        total_out += state.reduce(grad(comm.rank, t), key=0, layout=LAYOUT)
        total_in += np.mean([grad(r, t) for r in range(comm.size)], axis=0, dtype=np.float64)
        state.end_step()
    residual = state._buckets[0].memory.residual.astype(np.float64)
    mean_residual = np.zeros(N)
    comm.Allreduce(residual, mean_residual)  # residuals are of inputs already divided by p: their sum is the mean
    lhs = total_out + mean_residual
    ok = np.allclose(lhs, total_in, rtol=0, atol=(2e-2 if name == "fp16" else 2e-4) * np.abs(total_in).max())
    all_ok(comm, ok, f"{name}: sum of outputs + residual vs sum of inputs, max diff {np.abs(lhs - total_in).max()}")


@pytest.mark.parametrize("name", names())
def test_checkpoint_restores_exactly(comm, name):
    kw = {"compress_after_steps": 1} if name == "powersgd" else {}
    a = CompressionState(comm, name, seed=4, **kw)
    for t in range(3):
        a.reduce(grad(comm.rank, t), key=0, layout=LAYOUT)
        a.end_step()
    saved = a.gather_state_dict()
    b = CompressionState(comm, name, seed=4, **kw)
    b.load_state_dict({k: np.array(v) for k, v in saved.items()})
    outs = []
    for st in (a, b):
        outs.append([st.reduce(grad(comm.rank, t), key=0, layout=LAYOUT) for t in (3, 4)])
        st.end_step()
    all_ok(comm, all(np.array_equal(x, y) for x, y in zip(*outs)), f"{name}: resumed state diverged")
    all_ok(comm, b.step == a.step, "step restored")
    # at another rank count, the shared state comes from rank 0 and the per-rank memory starts from zero
    from mpi4py import MPI

    c = CompressionState(MPI.COMM_SELF, name, seed=4, **kw)
    c.load_state_dict(saved)
    has_memory = any(".memory." in k for k in c.state_dict())
    all_ok(comm, has_memory == (a.error_feedback and comm.size == 1), f"{name}: memory kept only at the same p")


def test_checkpoint_with_other_settings_is_rejected(comm):
    a = CompressionState(comm, "topk", ratio=0.1)
    a.reduce(grad(comm.rank), key=0)
    saved = a.gather_state_dict()
    ok, msg = _run(lambda: CompressionState(comm, "topk", ratio=0.2).load_state_dict(saved))
    all_ok(comm, not ok and "compression settings" in msg, f"expected a settings error, got {msg}")


def test_conflicting_settings_raise_on_every_rank(comm):
    ratio = 0.1 if comm.rank == 0 else 0.2
    state = CompressionState(comm, "topk", ratio=ratio)
    ok, msg = _run(lambda: state.reduce(grad(comm.rank), key=0))
    if comm.size == 1:
        all_ok(comm, ok, msg)
    else:
        all_ok(comm, not ok and "ratio" in msg and "MismatchError" in msg, f"expected a MismatchError, got {msg}")
    size_ok, msg = _run(lambda: CompressionState(comm, "sign").reduce(np.ones(10 + (comm.rank > 0), np.float32)))
    all_ok(comm, size_ok == (comm.size == 1), f"bucket sizes differing across ranks: {msg}")


def test_mismatch_error_type(comm):
    if comm.size == 1:
        pytest.skip("needs two ranks to disagree")
    state = CompressionState(comm, "sign" if comm.rank == 0 else "int8")
    with pytest.raises(MismatchError, match="compressor"):
        state.reduce(grad(comm.rank), key=0)


@pytest.mark.parametrize("counts", ["equal", "variable"])
def test_ring_allgather(comm, counts):
    p, r = comm.size, comm.rank
    sizes = [5] * p if counts == "equal" else [(3 * k) % 7 for k in range(p)]
    d = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    buf = np.full(d[-1], 255, np.uint8)
    buf[d[r]:d[r + 1]] = np.arange(sizes[r], dtype=np.uint8) + 10 * r
    wire = counting(comm)
    ring_allgather(wire, buf, None if counts == "equal" else sizes)
    want = np.concatenate([np.arange(sizes[k], dtype=np.uint8) + 10 * k for k in range(p)])
    all_ok(comm, np.array_equal(buf, want), "allgather result")
    all_ok(comm, wire.sent_bytes == sent_bytes(r, p, sizes), "allgather bytes")


def test_warmup_steps_go_uncompressed(comm):
    state = CompressionState(comm, "sign", compress_after_steps=2)
    x = grad(comm.rank)
    first = state.reduce(x, key=0)
    state.end_step()
    want = np.mean([grad(r) for r in range(comm.size)], axis=0)
    all_ok(comm, np.allclose(first, want, atol=1e-5), "warm-up step equals the plain mean")
    state.step = 2
    compressed = state.reduce(x, key=0)
    all_ok(comm, len(np.unique(np.abs(compressed))) <= comm.size + 1 or comm.size > 1, "compressed after warm-up")
    all_ok(comm, state._buckets[0].memory.residual is not None, "memory starts after warm-up")


@pytest.mark.cudasim
def test_sign_with_numba_cuda_kernels_across_ranks(comm):
    """Encode on the device, ring-allgather the bytes, decode every payload on the device in rank order."""
    from numba import cuda

    from ring_allreduce.compression import kernels as kernel_sets
    from ring_allreduce.compression import codec_numpy as ref

    ks, n, p = kernel_sets.get("numba_cuda"), 100, comm.size  # 100 elements: one block per launch
    x = grad(comm.rank)[:n]
    bits, scale = ks.sign_encode(cuda.to_device(x))
    nb = 4 + (n + 7) // 8
    buf = np.empty((p, nb), np.uint8)
    buf[comm.rank, :4] = np.frombuffer(np.float32(scale).tobytes(), np.uint8)
    buf[comm.rank, 4:] = bits.copy_to_host()
    ring_allgather(comm, buf.reshape(-1))
    out = cuda.to_device(np.zeros(n, np.float32))
    for k in range(p):
        ks.sign_decode(cuda.to_device(buf[k, 4:]), n, buf[k, :4].view(np.float32)[0], out, True)
    got = out.copy_to_host()
    want = np.zeros(n, np.float32)
    for k in range(p):
        b, s = ref.sign_encode(grad(k)[:n])
        ref.sign_decode(b, n, s, want, True)
    all_ok(comm, np.allclose(got, want, rtol=1e-6), "device sign round trip across ranks vs NumPy")
    assert_identical(comm, got, "device-decoded sum")
