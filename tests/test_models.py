"""Models: gradients against central finite differences (float64), kernels against the NumPy reference."""
import numpy as np
import pytest

from ring_allreduce.train import model_kernels, models

KERNELS = ["numpy", "numba"]


def _problem(name, kernel, n=7, seed=0):
    rng = np.random.default_rng(seed)
    if name == "mlp":
        net = models.mlp(5, [6, 4], 3, kernel=kernel, dtype=np.float64)
        y = rng.integers(0, 3, n)
    elif name == "logreg":
        net = models.logreg(5, 3, kernel=kernel, dtype=np.float64)
        y = rng.integers(0, 3, n)
    else:
        net = models.linreg(5, 2, kernel=kernel, dtype=np.float64)
        y = rng.standard_normal((n, 2))
    X = rng.standard_normal((n, 5))
    w = net.init(seed) + 0.05 * rng.standard_normal(net.n_params)  # non-zero biases too
    return net, X, y, w


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("name", ["mlp", "logreg", "linreg"])
def test_gradient_matches_finite_differences(name, kernel):
    net, X, y, w = _problem(name, kernel)
    scale = 1.0 / 11  # any scale: the gradient is scale * d(loss sum)/dw
    g = np.zeros(net.n_params)
    net.loss_and_grad(w, X, y, g, scale)
    eps = 1e-6
    fd = np.empty_like(g)
    for i in range(net.n_params):
        wp, wm = w.copy(), w.copy()
        wp[i] += eps
        wm[i] -= eps
        fd[i] = (net.evaluate(wp, X, y)[0] - net.evaluate(wm, X, y)[0]) / (2 * eps) * scale
    # central differences in float64 are accurate to ~eps^2 * f''' + 1e-16/eps: 1e-7 leaves margin
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("kernel", KERNELS)
def test_empty_batch_gives_zero_gradient_and_releases_every_bucket(kernel):
    net, X, y, w = _problem("mlp", kernel)
    g = np.full(net.n_params, 7.0)
    ready = []
    loss, correct = net.loss_and_grad(w, X[:0], y[:0], g, 0.5, on_ready=ready.append)
    assert (loss, correct) == (0.0, 0)
    assert not g.any()
    assert ready == sorted(ready) and ready[-1] == net.n_params and len(set(ready)) == net.n_layers


def test_on_ready_offsets_cover_layers_last_first():
    net = models.mlp(4, [3, 5], 2, kernel="numpy", dtype=np.float64)
    assert [s.name for s in net.specs] == ["W2", "b2", "W1", "b1", "W0", "b0"]
    rng = np.random.default_rng(1)
    ready = []
    net.loss_and_grad(net.init(0), rng.standard_normal((4, 4)), rng.integers(0, 2, 4), np.zeros(net.n_params), 1.0,
                      on_ready=ready.append)
    assert sorted(set(ready)) == [net.layer_end(2), net.layer_end(1), net.n_params] and ready == sorted(ready)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numba_kernel_matches_numpy(dtype):
    ref, nb = model_kernels.get("numpy"), model_kernels.get("numba")
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal((33, 10)) * 5).astype(dtype)
    y = rng.integers(0, 10, 33)
    d1, d2 = np.empty_like(logits), np.empty_like(logits)
    l1, c1 = ref.softmax_xent(logits, y, 0.25, d1)
    l2, c2 = nb.softmax_xent(logits, y, 0.25, d2)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert c1 == c2
    np.testing.assert_allclose(l1, l2, rtol=tol)
    np.testing.assert_allclose(d1, d2, rtol=tol, atol=tol)
    h = np.maximum(rng.standard_normal((9, 4)).astype(dtype), 0)
    delta = rng.standard_normal((9, 4)).astype(dtype)
    o1, o2 = np.empty_like(delta), np.empty_like(delta)
    ref.relu_backward(delta, h, o1)
    nb.relu_backward(delta, h, o2)
    np.testing.assert_array_equal(o1, o2)


def test_softmax_xent_is_stable_for_huge_logits():
    k = model_kernels.get("numpy")
    logits = np.array([[1000.0, 0.0, -1000.0]])
    d = np.empty_like(logits)
    loss, correct = k.softmax_xent(logits, np.array([0]), 1.0, d)
    assert np.isfinite(loss) and loss == pytest.approx(0.0) and correct == 1 and np.isfinite(d).all()


def test_unknown_model_and_kernel_names_list_valid_ones():
    with pytest.raises(ValueError, match="linreg, logreg, mlp"):
        models.build("cnn", 4, 2)
    with pytest.raises(ValueError, match="numba"):
        model_kernels.get("fortran")
