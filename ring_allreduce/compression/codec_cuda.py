"""GPU compression kernels: Numba CUDA kernels (tested on CPU under ``NUMBA_ENABLE_CUDASIM=1``) and CuPy versions.

Same conventions as :mod:`.codec_numpy`. Each set validates, allocates, then launches; nothing compiles or
touches a GPU until a kernel is first used. Scales and norms come back to the host as float32 (one 4-byte copy):
they go into the payload header, which is host memory anyway. ``sum |x|`` (sign) and ``sum x^2`` (QSGD norms)
sum within a block in shared memory (one atomic per block for ``sum |x|``, one block per QSGD chunk); ``max |x|``
(int8) still takes one atomic max per element. So the float32 scale may differ from NumPy's in the last bits; the
codes themselves are computed from that scale and are exact. QSGD norms come back as a host float32 array (one per chunk). Top-k selection is provided by the CuPy set only (``cupy.argpartition``).
"""
from __future__ import annotations

import math

import numpy as np

_THREADS = 128


def _blocks(n: int) -> int:
    return max(1, math.ceil(n / _THREADS))


cuda = None  # numba.cuda, bound on first use: a module global so that the simulator can swap it in kernels


def _import_cuda():
    global cuda
    if cuda is None:
        from numba import cuda as _cuda

        cuda = _cuda
    return cuda


def _numba_cuda_kernels():
    """Define (lazily: numba compiles at first launch) the Numba CUDA kernels."""
    _import_cuda()
    from numba import float64

    @cuda.jit(device=True)
    def block_sum(part, t):
        """Tree-sum the block's ``part`` (shared, _THREADS long) into ``part[0]``; every thread must call it."""
        cuda.syncthreads()
        step = _THREADS // 2
        while step > 0:
            if t < step:
                part[t] += part[t + step]
            cuda.syncthreads()
            step //= 2

    @cuda.jit
    def sign_encode(x, bits, acc):
        # one atomic per block, not per thread: on an H200 a float64 atomic per 8 elements into one address
        # serialized the encoder at ~15 GB/s
        b = cuda.grid(1)
        t = cuda.threadIdx.x
        part = cuda.shared.array(_THREADS, float64)
        s = 0.0
        if b < bits.size:
            base = b * 8
            byte = 0
            for j in range(8):
                i = base + j
                if i < x.size:
                    v = x[i]
                    if v < 0:
                        byte |= 1 << j
                        s -= v
                    else:
                        s += v
            bits[b] = byte
        part[t] = s
        block_sum(part, t)
        if t == 0:
            cuda.atomic.add(acc, 0, part[0])

    @cuda.jit
    def sign_decode(bits, n, scale, out, add):
        i = cuda.grid(1)
        if i < n:
            v = -scale if (bits[i >> 3] >> (i & 7)) & 1 else scale
            if add:
                out[i] += v
            else:
                out[i] = v

    @cuda.jit
    def absmax(x, acc):
        i = cuda.grid(1)
        if i < x.size:
            cuda.atomic.max(acc, 0, abs(x[i]))

    @cuda.jit
    def chunk_sumsq(x, chunk, acc):
        # one block per chunk, no atomics (was one float64 atomic per element into the chunk's slot)
        c = cuda.blockIdx.x
        t = cuda.threadIdx.x
        part = cuda.shared.array(_THREADS, float64)
        s = 0.0
        i = c * chunk + t
        end = min(c * chunk + chunk, x.size)
        while i < end:
            v = float(x[i])
            s += v * v
            i += _THREADS
        part[t] = s
        block_sum(part, t)
        if t == 0:
            acc[c] = part[0]

    @cuda.jit
    def int8_encode(x, scale, q):
        i = cuda.grid(1)
        if i < x.size:
            v = round(x[i] / scale)  # round half to even, like np.rint
            q[i] = max(-127, min(127, v))

    @cuda.jit
    def levels_decode(q, scale, out, add):
        i = cuda.grid(1)
        if i < q.size:
            v = q[i] * scale
            if add:
                out[i] += v
            else:
                out[i] = v

    @cuda.jit
    def qsgd_encode(x, norms, s, chunk, u, levels):
        i = cuda.grid(1)
        if i < x.size:
            nrm = norms[i // chunk]
            mult = s / nrm if nrm > 0 else nrm * 0
            v = x[i]
            m = math.floor(abs(v) * mult + u[i])
            m = min(m, s)
            levels[i] = -m if v < 0 else m

    @cuda.jit
    def qsgd_decode(levels, norms, s, chunk, out, add):
        i = cuda.grid(1)
        if i < levels.size:
            v = levels[i] * (norms[i // chunk] / s)
            if add:
                out[i] += v
            else:
                out[i] = v

    @cuda.jit
    def gather(x, idx, out):
        j = cuda.grid(1)
        if j < idx.size:
            out[j] = x[idx[j]]

    @cuda.jit
    def scatter(idx, vals, out):
        j = cuda.grid(1)
        if j < idx.size:
            out[idx[j]] += vals[j]

    @cuda.jit
    def fill_zero(out):
        i = cuda.grid(1)
        if i < out.size:
            out[i] = 0

    return dict(sign_encode=sign_encode, sign_decode=sign_decode, absmax=absmax, chunk_sumsq=chunk_sumsq,
                int8_encode=int8_encode, levels_decode=levels_decode, qsgd_encode=qsgd_encode,
                qsgd_decode=qsgd_decode, gather=gather, scatter=scatter, fill_zero=fill_zero)


class NumbaCudaKernels:
    """Compression kernels on Numba CUDA device arrays."""

    name = "numba_cuda"
    backend = "numba_cuda"

    def __init__(self):
        self.cuda = _import_cuda()
        self._k = _numba_cuda_kernels()

    def _scalar_reduce(self, kernel, x, dtype=np.float64):
        acc = self.cuda.to_device(np.zeros(1, dtype))
        kernel[_blocks(x.size), _THREADS](x, acc)
        return acc.copy_to_host()[0]

    def sign_encode(self, x):
        bits = self.cuda.device_array((x.size + 7) // 8, np.uint8)
        acc = self.cuda.to_device(np.zeros(1, np.float64))
        self._k["sign_encode"][_blocks(bits.size), _THREADS](x, bits, acc)
        total = acc.copy_to_host()[0]
        return bits, np.float32(total / x.size if x.size else 0.0)

    def sign_decode(self, bits, n, scale, out, add=False):
        self._k["sign_decode"][_blocks(n), _THREADS](bits, n, np.float32(scale), out, add)
        return out

    def int8_encode(self, x):
        q = self.cuda.device_array(x.size, np.int8)
        amax = self._scalar_reduce(self._k["absmax"], x, np.float32) if x.size else 0.0
        scale = np.float32(amax / 127.0)
        if scale == 0:
            self._k["fill_zero"][_blocks(x.size), _THREADS](q)
        else:
            self._k["int8_encode"][_blocks(x.size), _THREADS](x, scale, q)
        return q, scale

    def int8_decode(self, q, scale, out, add=False):
        self._k["levels_decode"][_blocks(q.size), _THREADS](q, np.float32(scale), out, add)
        return out

    def qsgd_encode(self, x, s, u, chunk):
        nb = -(-x.size // chunk)
        acc = self.cuda.to_device(np.zeros(nb, np.float64))
        levels = self.cuda.device_array(x.size, np.int8)
        if x.size:
            self._k["chunk_sumsq"][nb, _THREADS](x, chunk, acc)
        norms = np.sqrt(acc.copy_to_host()).astype(np.float32)
        if x.size:
            self._k["qsgd_encode"][_blocks(x.size), _THREADS](x, self.cuda.to_device(norms), np.float32(s), chunk, u,
                                                              levels)
        return levels, norms

    def qsgd_decode(self, levels, norms, s, chunk, out, add=False):
        self._k["qsgd_decode"][_blocks(levels.size), _THREADS](levels, self.cuda.to_device(np.asarray(norms)),
                                                               np.float32(s), chunk, out, add)
        return out

    def topk_indices(self, x, k):
        raise NotImplementedError("top-k selection on Numba CUDA arrays is not provided; use the 'cupy' set")

    def gather(self, x, idx):
        out = self.cuda.device_array(idx.size, x.dtype)
        self._k["gather"][_blocks(idx.size), _THREADS](x, idx, out)
        return out

    def scatter(self, idx, vals, out, add=False):
        if not add:
            self._k["fill_zero"][_blocks(out.size), _THREADS](out)
        self._k["scatter"][_blocks(idx.size), _THREADS](idx, vals, out)
        return out


class CupyKernels:
    """Compression kernels on CuPy arrays (CuPy's own packbits / argpartition / elementwise ops)."""

    name = "cupy"
    backend = "cupy"

    def __init__(self):
        import cupy

        self.cp = cupy

    def sign_encode(self, x):
        cp = self.cp
        bits = cp.packbits(x < 0, bitorder="little")
        scale = np.float32(float(cp.abs(x, dtype=cp.float64).mean())) if x.size else np.float32(0)
        return bits, scale

    def sign_decode(self, bits, n, scale, out, add=False):
        cp = self.cp
        neg = cp.unpackbits(bits, bitorder="little")[:n].astype(bool)
        vals = cp.where(neg, -np.float32(scale), np.float32(scale)).astype(out.dtype, copy=False)
        if add:
            out += vals
        else:
            out[...] = vals
        return out

    def int8_encode(self, x):
        cp = self.cp
        scale = np.float32(float(cp.abs(x).max()) / 127.0) if x.size else np.float32(0)
        if scale == 0:
            return cp.zeros(x.size, cp.int8), scale
        q = cp.clip(cp.rint(x.astype(cp.float32) / scale), -127, 127)
        return q.astype(cp.int8), scale

    def int8_decode(self, q, scale, out, add=False):
        vals = q.astype(self.cp.float32) * np.float32(scale)
        if add:
            out += vals
        else:
            out[...] = vals
        return out

    def qsgd_encode(self, x, s, u, chunk):
        cp = self.cp
        n, nb = x.size, -(-x.size // chunk)
        sq = cp.zeros(nb * chunk, cp.float64)
        sq[:n] = x.astype(cp.float64) ** 2
        norms = cp.sqrt(sq.reshape(nb, chunk).sum(axis=1)).astype(cp.float32)
        mult = cp.where(norms > 0, np.float32(s) / cp.where(norms > 0, norms, 1), 0).astype(cp.float32)
        mag = cp.abs(x).astype(cp.float32) * cp.repeat(mult, chunk)[:n] + u.astype(cp.float32)
        mag = cp.minimum(cp.floor(mag), s)
        return cp.copysign(mag, x).astype(cp.int8), cp.asnumpy(norms)

    def qsgd_decode(self, levels, norms, s, chunk, out, add=False):
        cp = self.cp
        scale = cp.repeat(cp.asarray(norms, cp.float32) / np.float32(s), chunk)[:levels.size]
        vals = levels.astype(cp.float32) * scale
        if add:
            out += vals
        else:
            out[...] = vals
        return out

    def topk_indices(self, x, k):
        cp = self.cp
        n = x.size
        if k >= n:
            return cp.arange(n, dtype=cp.int32)
        idx = cp.argpartition(cp.abs(x), n - k)[n - k:]
        return cp.sort(idx).astype(cp.int32)

    def gather(self, x, idx):
        return x[idx]

    def scatter(self, idx, vals, out, add=False):
        if not add:
            out[...] = 0
        out[idx] += vals.astype(out.dtype, copy=False)
        return out
