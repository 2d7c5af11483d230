"""Compression kernels against the NumPy reference: Numba CPU here, Numba CUDA under the simulator (``cudasim``,
a few blocks of 128 threads each), CuPy on a real GPU (``gpu``).

One test body per kernel runs every set on the same input and compares with ``codec_numpy``.
"""
import numpy as np
import pytest

from ring_allreduce.compression import kernels as kernel_sets
from ring_allreduce.compression import codec_numpy as ref

CPU_SETS = ["numpy", "numba"]


def data(n, seed=0):
    x = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    x[::7] = 0.0  # zeros: sign convention (bit clear) and qsgd/int8 level 0
    return x


def check_set(ks, n, to_dev, to_host, chunk=64):
    """Compare every kernel of set ``ks`` with the NumPy reference on ``n`` elements (QSGD norms per ``chunk``)."""
    x = data(n)
    xd = to_dev(x)
    # sign
    bits, scale = ks.sign_encode(xd)
    rbits, rscale = ref.sign_encode(x)
    np.testing.assert_array_equal(to_host(bits), rbits)
    assert np.isclose(scale, rscale, rtol=1e-6)
    out = to_dev(np.full(n, 1.0, np.float32))
    ks.sign_decode(to_dev(rbits), n, rscale, out, True)
    np.testing.assert_array_equal(to_host(out), ref.sign_decode(rbits, n, rscale, np.full(n, 1.0, np.float32), True))
    # int8 (the scale may differ in the last bit where reductions run in another order: codes use each one's own)
    q, s8 = ks.int8_encode(xd)
    rq, rs8 = ref.int8_encode(x)
    assert np.isclose(s8, rs8, rtol=1e-6)
    np.testing.assert_array_equal(to_host(q), rq)
    out = to_dev(np.zeros(n, np.float32))
    ks.int8_decode(to_dev(rq), rs8, out)
    np.testing.assert_array_equal(to_host(out), ref.int8_decode(rq, rs8, np.zeros(n, np.float32)))
    # qsgd, with the caller's uniform draws, one norm per chunk (several chunks, a partial last one)
    u = np.random.default_rng(1).random(n, dtype=np.float32)
    lv, norms = ks.qsgd_encode(xd, 5, to_dev(u), chunk)
    rlv, rnorms = ref.qsgd_encode(x, 5, u, chunk)
    np.testing.assert_allclose(np.asarray(norms), rnorms, rtol=1e-6)
    if np.array_equal(np.asarray(norms), rnorms):  # atomics may round a norm differently: then a level may move by 1
        np.testing.assert_array_equal(to_host(lv), rlv)
    else:
        assert np.abs(to_host(lv).astype(int) - rlv).max() <= 1
    out = to_dev(np.zeros(n, np.float32))
    ks.qsgd_decode(to_dev(rlv), rnorms, 5, chunk, out, False)
    np.testing.assert_allclose(to_host(out), ref.qsgd_decode(rlv, rnorms, 5, chunk, np.zeros(n, np.float32)), rtol=1e-6)
    # gather / scatter
    idx = np.unique(np.array([0, min(3, n - 1), n - 1], np.int32))
    np.testing.assert_array_equal(to_host(ks.gather(xd, to_dev(idx))), x[idx])
    out = to_dev(np.ones(n, np.float32))
    ks.scatter(to_dev(idx), to_dev(x[idx]), out, False)
    np.testing.assert_array_equal(to_host(out), ref.scatter(idx, x[idx], np.ones(n, np.float32)))
    ks.scatter(to_dev(idx), to_dev(x[idx]), out, True)
    np.testing.assert_array_equal(to_host(out), ref.scatter(idx, 2 * x[idx], np.zeros(n, np.float32)))


@pytest.mark.parametrize("name", CPU_SETS)
@pytest.mark.parametrize("n", [1, 13, 1000])
def test_cpu_sets_match_reference(name, n):
    check_set(kernel_sets.get(name), n, lambda a: a, lambda a: np.asarray(a))


@pytest.mark.parametrize("name", CPU_SETS)
def test_topk_indices(name):
    x = data(500, 3)
    idx = kernel_sets.get(name).topk_indices(x, 10)
    np.testing.assert_array_equal(idx, np.sort(np.argsort(-np.abs(x))[:10]))
    assert idx.dtype == np.int32
    np.testing.assert_array_equal(kernel_sets.get(name).topk_indices(x[:5], 9), np.arange(5))


def test_all_zero_input():
    for name in CPU_SETS:
        ks = kernel_sets.get(name)
        z = np.zeros(20, np.float32)
        assert ks.int8_encode(z)[1] == 0 and not ks.int8_encode(z)[0].any()
        lv, norms = ks.qsgd_encode(z, 3, np.full(20, 0.99, np.float32), 8)
        assert not norms.any() and not lv.any()
        assert ks.sign_encode(z)[1] == 0


def test_registry_lists_sets_and_builds_lazily():
    assert set(kernel_sets.names()) == {"numpy", "numba", "numba_cuda", "cupy"}
    with pytest.raises(ValueError, match="valid names: cupy, numba, numba_cuda, numpy"):
        kernel_sets.get("opencl")


@pytest.mark.cudasim
def test_numba_cuda_matches_reference_in_simulator():
    from numba import cuda

    # 200 elements: two blocks of 128 threads for the elementwise kernels, one for the byte kernels
    check_set(kernel_sets.get("numba_cuda"), 200, cuda.to_device, lambda a: a.copy_to_host())


@pytest.mark.cudasim
def test_numba_cuda_block_sums_across_blocks_in_simulator():
    """Three blocks of sign bytes (one atomic each into the scale) and QSGD chunks longer than a block (each
    thread strides over its chunk more than once): the block sums must still equal the reference."""
    from numba import cuda

    check_set(kernel_sets.get("numba_cuda"), 3000, cuda.to_device, lambda a: a.copy_to_host(), chunk=300)


@pytest.mark.gpu
@pytest.mark.parametrize("n", [13, 100_000])
def test_cupy_matches_reference(n):
    import cupy

    check_set(kernel_sets.get("cupy"), n, cupy.asarray, cupy.asnumpy)
    x = data(n, 4)
    np.testing.assert_array_equal(cupy.asnumpy(kernel_sets.get("cupy").topk_indices(cupy.asarray(x), 7)),
                                  ref.topk_indices(x, 7))


@pytest.mark.gpu
def test_numba_cuda_matches_reference_on_gpu():
    from numba import cuda

    check_set(kernel_sets.get("numba_cuda"), 100_000, cuda.to_device, lambda a: a.copy_to_host())
