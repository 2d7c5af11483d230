"""GPU model kernels: Numba CUDA ones under the simulator (``cudasim``), CuPy ones on a real GPU (``gpu``).

NumPy is the reference for both. The simulator runs ~0.3 s per block of 128 threads, so sizes stay at 1-2 blocks.
"""
import os

import numpy as np
import pytest

from ring_allreduce.train import model_kernels

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def _logits(n, k, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, k)) * 3).astype(dtype), rng.integers(0, k, n)


@pytest.mark.cudasim
@pytest.mark.skipif(not SIM, reason="needs NUMBA_ENABLE_CUDASIM=1 (tests/run.py --tiers cudasim)")
def test_numba_cuda_softmax_xent_matches_numpy_under_the_simulator():
    from ring_allreduce.train import mlp_cuda

    L, y = _logits(150, 5, np.float64)  # two blocks, the second one partly idle
    d_ref, d = np.empty_like(L), np.empty_like(L)
    loss_ref, corr_ref = model_kernels.get("numpy").softmax_xent(L, y, 0.5, d_ref)
    loss, corr = mlp_cuda.softmax_xent_numba_cuda(L, y, 0.5, d, np)
    assert corr == corr_ref
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-12)
    np.testing.assert_allclose(d, d_ref, rtol=1e-12, atol=1e-15)


@pytest.mark.cudasim
@pytest.mark.skipif(not SIM, reason="needs NUMBA_ENABLE_CUDASIM=1 (tests/run.py --tiers cudasim)")
def test_numba_cuda_relu_backward_matches_numpy_under_the_simulator():
    from ring_allreduce.train import mlp_cuda

    rng = np.random.default_rng(1)
    h = np.maximum(rng.standard_normal((10, 20)), 0).astype(np.float32)  # 200 elements: two blocks
    delta = rng.standard_normal((10, 20)).astype(np.float32)
    out, ref = np.empty_like(delta), np.empty_like(delta)
    model_kernels.get("numpy").relu_backward(delta, h, ref)
    mlp_cuda.relu_backward_numba_cuda(delta, h, out)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["cupy", "cupy-numba"])
def test_gpu_kernels_match_numpy(name):
    import cupy

    k, ref = model_kernels.get(name), model_kernels.get("numpy")
    L, y = _logits(300, 10, np.float64)
    d_ref = np.empty_like(L)
    l_ref, c_ref = ref.softmax_xent(L, y, 0.25, d_ref)
    Lg, yg = cupy.asarray(L), cupy.asarray(y)
    dg = cupy.empty_like(Lg)
    lg, cg = k.softmax_xent(Lg, yg, 0.25, dg)
    assert cg == c_ref
    np.testing.assert_allclose(lg, l_ref, rtol=1e-10)
    np.testing.assert_allclose(cupy.asnumpy(dg), d_ref, rtol=1e-10, atol=1e-14)
    h = np.maximum(L, 0)
    o_ref = np.empty_like(L)
    ref.relu_backward(L, h, o_ref)
    og = cupy.empty_like(Lg)
    k.relu_backward(Lg, cupy.asarray(h), og)
    np.testing.assert_array_equal(cupy.asnumpy(og), o_ref)


@pytest.mark.gpu
def test_a_gpu_training_run_matches_the_cpu_run():
    """The whole step on the device (CuPy params, gradient buckets and data) equals the NumPy run (p = 1)."""
    from mpi4py import MPI

    from ring_allreduce.train import cli

    argv = ["--dtype", "float64", "--hidden", "32", "--max-steps", "20", "--quiet"]
    cpu = cli.build(cli.parse(argv + ["--kernel", "numpy"]), MPI.COMM_SELF)
    gpu = cli.build(cli.parse(argv + ["--kernel", "cupy"]), MPI.COMM_SELF)
    cpu.fit()
    gpu.fit()
    assert type(gpu.optimizer.grad).__module__.startswith("cupy")
    np.testing.assert_allclose(gpu.optimizer.params.get(), cpu.optimizer.params, rtol=1e-9, atol=1e-11)
