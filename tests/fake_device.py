"""A fake asynchronous device for tests: kernels are queued and run only at ``synchronize()``.

Its arrays live in host memory but are not NumPy arrays: the package sees them as a device backend
(``"fake_device"``), and mpi4py hands their ``__cuda_array_interface__`` pointer to MPI, as it does for a CUDA-aware
MPI. Every kernel call (reduce, scale, copy) and every host-to-device copy is deferred to the stream, so a buffer
that MPI reads (or receives into) before the stream that writes it is synchronized holds stale bytes, and the
result is wrong: a missing synchronization fails in CI without a GPU. ``install()``/``uninstall()`` register the
backend and its kernel; ``stream`` counts what was queued and run.
"""
import numpy as np

from ring_allreduce import backends, kernels
from ring_allreduce.kernels.numpy_kernels import NumpyKernel

NAME = "fake_device"
_ref = NumpyKernel()


class Stream:
    def __init__(self):
        self.queue, self.launched, self.syncs = [], 0, 0

    def launch(self, fn):
        self.queue.append(fn)
        self.launched += 1

    def synchronize(self):
        q, self.queue = self.queue, []
        for fn in q:
            fn()
        self.syncs += 1


stream = Stream()


class FakeDeviceArray:
    """A C-contiguous "device" array over host memory (``.host``: the memory, for the test's own checks only)."""

    __slots__ = ("host",)

    def __init__(self, host: np.ndarray):
        self.host = host

    @property
    def __cuda_array_interface__(self):
        h = self.host
        return {"shape": h.shape, "typestr": h.dtype.str, "data": (h.__array_interface__["data"][0], False),
                "version": 3, "strides": None, "stream": None}

    shape = property(lambda self: self.host.shape)
    dtype = property(lambda self: self.host.dtype)
    size = property(lambda self: self.host.size)
    ndim = property(lambda self: self.host.ndim)
    nbytes = property(lambda self: self.host.nbytes)
    itemsize = property(lambda self: self.host.itemsize)
    flags = property(lambda self: self.host.flags)

    def reshape(self, *shape):
        return FakeDeviceArray(self.host.reshape(*shape))

    def __getitem__(self, key):
        return FakeDeviceArray(self.host[key])

    def __len__(self):
        return len(self.host)


def to_device(a) -> FakeDeviceArray:
    """A device array that will hold ``a`` once the stream runs (the copy is queued, like an async upload)."""
    a = np.ascontiguousarray(a)
    d = FakeDeviceArray(np.full(a.shape, 0x5A, np.uint8).view(a.dtype) if a.dtype.itemsize == 1 else
                        _garbage(a.shape, a.dtype))
    stream.launch(lambda: np.copyto(d.host, a))
    return d


def _garbage(shape, dtype):
    return np.frombuffer(np.full(int(np.prod(shape)) * np.dtype(dtype).itemsize, 0x7F, np.uint8).tobytes(),
                         dtype).reshape(shape).copy()


class FakeDeviceKernel:
    """The NumPy reference kernel, queued on the fake stream."""

    name = NAME
    backend = NAME

    def reduce(self, a, b, out, op, div=None):
        stream.launch(lambda: _ref.reduce(a.host, b.host, out.host, op, div))

    def scale(self, x, out, div):
        stream.launch(lambda: _ref.scale(x.host, out.host, div))

    def copy(self, dst, src):
        stream.launch(lambda: np.copyto(dst.host, src.host))

    def empty(self, n, dtype):
        return FakeDeviceArray(_garbage((n,), dtype))

    def synchronize(self):
        stream.synchronize()


def _to_host(x):
    return x.host.copy()


def _from_host(host, out):
    host = np.array(host, copy=True)
    stream.launch(lambda: np.copyto(out.host, host.reshape(out.shape)))


def install():
    backends.register(NAME, is_array=lambda x: isinstance(x, FakeDeviceArray), synchronize=stream.synchronize,
                      to_host=_to_host, from_host=_from_host,
                      empty_like=lambda x: FakeDeviceArray(_garbage(x.shape, x.dtype)))
    kernels.register(NAME, FakeDeviceKernel, overwrite=True)
    kernels.DEFAULTS[NAME] = NAME


def uninstall():
    stream.synchronize()
    backends.unregister(NAME)
    kernels.registry.unregister(NAME)
    kernels.DEFAULTS.pop(NAME, None)
