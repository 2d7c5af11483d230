"""GPU model kernels: the fused activation and softmax-loss parts on CuPy arrays, so a GPU step stays on the device.

Two flavours of the same interface as :class:`ring_allreduce.train.mlp_numpy.NumpyModelKernel` (``xp`` is
CuPy, so the matrix products run in cuBLAS):

- :class:`CupyModelKernel` (registered as ``cupy``): a CuPy ``ElementwiseKernel`` for the ReLU backward and the
  softmax-loss from CuPy reductions (the NumPy reference's passes, on the device);
- :class:`NumbaCudaModelKernel` (``cupy-numba``): the Numba CUDA kernels of :mod:`.mlp_numba_cuda` (one thread
  per row for the softmax-loss, one per element for the ReLU backward) on the same CuPy arrays. These are the
  ones the tests run on a CPU through the Numba CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``).

Nothing here is imported or compiled until a kernel is asked for. The loss and correct count are copied back to
the host once per call (two scalars), which is the step's only device-to-host transfer besides the gradient
buckets handed to MPI.
"""
from __future__ import annotations


def softmax_xent_numba_cuda(logits, y, scale, delta, xp):
    """Launch the Numba CUDA softmax-loss on ``xp`` arrays (CuPy, or NumPy under the simulator)."""
    from .mlp_numba_cuda import THREADS, blocks, softmax_xent

    n = logits.shape[0]
    if n == 0:
        return 0.0, 0
    row_loss = xp.empty(n, dtype=xp.float64)
    row_correct = xp.empty(n, dtype=xp.int32)
    softmax_xent[blocks(n), THREADS](logits, y, float(scale), delta, row_loss, row_correct)
    return float(row_loss.sum()), int(row_correct.sum())


def relu_backward_numba_cuda(delta, h, out):
    from .mlp_numba_cuda import THREADS, blocks, relu_backward

    relu_backward[blocks(delta.size), THREADS](delta.reshape(-1), h.reshape(-1), out.reshape(-1))


class CupyModelKernel:
    name = "cupy"

    def __init__(self):
        import cupy

        self.xp = cupy
        self._relu_bwd = cupy.ElementwiseKernel("T d, T h", "T o", "o = h > 0 ? d : (T)0", "ra_relu_backward")

    def relu_(self, z):
        self.xp.maximum(z, 0, out=z)

    def relu_backward(self, delta, h, out):
        self._relu_bwd(delta, h, out)

    def softmax_xent(self, logits, y, scale, delta):
        xp = self.xp
        n = logits.shape[0]
        if n == 0:
            return 0.0, 0
        m = logits.max(axis=1, keepdims=True)
        xp.subtract(logits, m, out=delta)
        xp.exp(delta, out=delta)
        s = delta.sum(axis=1, keepdims=True)
        rows = xp.arange(n)
        loss = xp.sum(xp.log(s[:, 0]) + m[:, 0] - logits[rows, y])
        correct = xp.count_nonzero(logits.argmax(axis=1) == y)
        xp.multiply(delta, (scale / s).astype(delta.dtype, copy=False), out=delta)
        delta[rows, y] -= delta.dtype.type(scale)
        return float(loss), int(correct)

    def mse(self, pred, y, scale, delta):
        if pred.shape[0] == 0:
            return 0.0, 0
        self.xp.subtract(pred, y.reshape(pred.shape), out=delta)
        loss = 0.5 * float(self.xp.sum(self.xp.square(delta.astype(self.xp.float64))))
        delta *= delta.dtype.type(scale)
        return loss, 0


class NumbaCudaModelKernel(CupyModelKernel):
    """CuPy for the products, Numba CUDA for the fused softmax-loss and ReLU backward."""

    name = "cupy-numba"

    def relu_backward(self, delta, h, out):
        relu_backward_numba_cuda(delta, h, out)

    def softmax_xent(self, logits, y, scale, delta):
        return softmax_xent_numba_cuda(logits, y, scale, delta, self.xp)
