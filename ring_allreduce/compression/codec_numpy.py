"""NumPy reference compression kernels: sign packing, int8 and QSGD quantization, top-k selection, gather/scatter.

Every other compression kernel set (Numba CPU, Numba CUDA, CuPy) is tested against these. Conventions shared by
all sets:

- sign bits: bit ``i % 8`` (little bit order) of byte ``i // 8`` is set when ``x[i] < 0``; the scale is the mean
  absolute value (``||x||_1 / n``), so ``±scale`` has the same l1 norm as ``x`` (EF-signSGD);
- int8: ``scale = max|x| / 127``, ``q = rint(x / scale)`` (0 everywhere when ``x`` is all zeros);
- QSGD: per chunk of ``chunk`` elements ``norm = ||x_chunk||_2``, ``level = floor(|x| * (s / norm) + u) * sign(x)``
  with ``u`` uniform in [0, 1) supplied by the caller (the kernels hold no random state), so
  ``E[level * norm / s] = x``;
- top-k: the indices of the ``k`` largest ``|x|``, sorted ascending, as int32;
- every ``*_decode`` takes ``out`` and ``add``: ``add=True`` accumulates into ``out`` (``out += decoded``), which is
  how the allgather route sums every rank's payload without temporaries.
"""
from __future__ import annotations

import numpy as np

name = "numpy"
backend = "numpy"


def sign_encode(x: np.ndarray):
    """Return ``(bits, scale)``: packed sign bits (``ceil(n/8)`` bytes) and ``mean |x|`` as float32."""
    bits = np.packbits(x < 0, bitorder="little")
    scale = np.float32(np.abs(x, dtype=np.float64).mean()) if x.size else np.float32(0)
    return bits, scale


def _sign_table(scale, dtype) -> np.ndarray:
    """``table[b]``: the 8 values (``±scale``) that byte ``b`` decodes to, so decoding is a single gather."""
    bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little").astype(bool)
    s = np.asarray(scale, dtype=np.float32).astype(dtype)
    return np.where(bits, -s, s)


def sign_decode(bits: np.ndarray, n: int, scale, out: np.ndarray, add: bool = False) -> np.ndarray:
    """Write (or with ``add`` accumulate) ``scale * (-1 if bit else +1)`` for ``n`` elements into ``out``."""
    vals = _sign_table(scale, out.dtype)[bits].reshape(-1)[:n]
    if add:
        out += vals
    else:
        out[:] = vals
    return out


def int8_encode(x: np.ndarray):
    """Return ``(q, scale)``: int8 codes and the float32 scale ``max|x| / 127``."""
    amax = float(np.abs(x).max()) if x.size else 0.0
    scale = np.float32(amax / 127.0)
    if scale == 0:
        return np.zeros(x.size, np.int8), scale
    q = np.rint(x.astype(np.float32) / scale)
    np.clip(q, -127, 127, out=q)
    return q.astype(np.int8), scale


def int8_decode(q: np.ndarray, scale, out: np.ndarray, add: bool = False) -> np.ndarray:
    """Write (or accumulate) ``q * scale`` into ``out``."""
    vals = q.astype(np.float32) * np.float32(scale)
    if add:
        out += vals
    else:
        out[:] = vals
    return out


def qsgd_norms(x: np.ndarray, chunk: int) -> np.ndarray:
    """Return the float32 l2 norm of each ``chunk``-element slice of ``x`` (summed in float64)."""
    if x.size == 0:
        return np.zeros(0, np.float32)
    x64 = x.astype(np.float64)
    x64 *= x64
    return np.sqrt(np.add.reduceat(x64, np.arange(0, x.size, chunk))).astype(np.float32)


def qsgd_quantize(x: np.ndarray, norms: np.ndarray, s: int, chunk: int, u: np.ndarray) -> np.ndarray:
    """Return the int8 levels of ``x`` given each chunk's norm (``floor(|x| * (s / norm) + u)``, signed)."""
    mult = np.zeros(norms.size, np.float32)
    np.divide(np.float32(s), norms, out=mult, where=norms > 0)
    # float32 throughout, in the order the fused kernels use: floor(|x| * (s / norm) + u)
    mag = np.abs(x).astype(np.float32, copy=False)
    mag *= np.repeat(mult, chunk)[:x.size]
    mag += u.astype(np.float32, copy=False)
    np.floor(mag, out=mag)
    np.minimum(mag, s, out=mag)
    np.copysign(mag, x, out=mag)  # (a masked np.negative is 50x slower)
    return mag.astype(np.int8)


def qsgd_encode(x: np.ndarray, s: int, u: np.ndarray, chunk: int):
    """Return ``(levels, norms)``: signed int8 levels in ``[-s, s]`` (``s <= 127``) and one float32 l2 norm per
    ``chunk`` elements (QSGD's bucketing: smaller chunks, smaller variance)."""
    norms = qsgd_norms(x, chunk)
    return qsgd_quantize(x, norms, s, chunk, u), norms


def qsgd_decode(levels: np.ndarray, norms: np.ndarray, s: int, chunk: int, out: np.ndarray,
                add: bool = False) -> np.ndarray:
    """Write (or accumulate) ``levels * norm / s`` (each chunk's norm) into ``out``."""
    vals = levels.astype(np.float32) * np.repeat(norms / np.float32(s), chunk)[:levels.size]
    if add:
        out += vals
    else:
        out[:] = vals
    return out


def topk_indices(x: np.ndarray, k: int) -> np.ndarray:
    """Return the ascending int32 indices of the ``k`` largest ``|x|``."""
    n = x.size
    if k >= n:
        return np.arange(n, dtype=np.int32)
    idx = np.argpartition(np.abs(x), n - k)[n - k:]
    idx.sort()
    return idx.astype(np.int32)


def gather(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Return ``x[idx]``."""
    return x[idx]


def scatter(idx: np.ndarray, vals: np.ndarray, out: np.ndarray, add: bool = False) -> np.ndarray:
    """Set (or with ``add`` accumulate) ``out[idx] = vals``; with ``add=False`` everything else is zeroed.

    Indices within one call are distinct (top-k and random-k draw without replacement), so ``+=`` is exact.
    """
    if not add:
        out[:] = 0
    out[idx] += vals.astype(out.dtype, copy=False)
    return out
