"""The compressor protocol, the bucket layout it sees, and helpers to lay typed fields out in a byte payload.

A compressor turns one bucket (a flat float32 vector made of tensors of known shapes) into a payload, the only thing
that crosses the wire, and a context that stays on the rank. ``summable`` compressors produce payloads whose sum
over ranks decompresses to the sum of what each rank sent (fp16, random-k with shared indices, PowerSGD's P and Q):
they go through the hand-written allreduce. The others (top-k, sign, int8, QSGD: per-rank indices or scales)
produce fixed-size byte payloads that go through the ring allgather and are decompressed and summed locally.
"""
from __future__ import annotations

import json
import math
from typing import List, Sequence, Tuple

import numpy as np

from . import kernels as _kernel_sets


class Layout:
    """The shapes of the tensors packed one after the other into a bucket (``None`` means one flat vector)."""

    __slots__ = ("shapes", "offsets", "size")

    def __init__(self, shapes: Sequence[Tuple[int, ...]]):
        self.shapes = tuple(tuple(int(d) for d in s) for s in shapes)
        self.offsets = [0]
        for s in self.shapes:
            self.offsets.append(self.offsets[-1] + math.prod(s))
        self.size = self.offsets[-1]

    @classmethod
    def of(cls, layout, n: int) -> "Layout":
        """Return ``layout`` as a :class:`Layout` of ``n`` elements (``None``: a single 1-D tensor)."""
        if layout is None:
            return cls([(n,)])
        lay = layout if isinstance(layout, Layout) else cls(layout)
        if lay.size != n:
            raise ValueError(f"layout shapes {lay.shapes} hold {lay.size} elements but the bucket has {n}")
        return lay

    def tensors(self, x):
        """Yield ``(shape, view)`` for each tensor of the flat bucket ``x``."""
        for s, a, b in zip(self.shapes, self.offsets, self.offsets[1:]):
            yield s, x[a:b]

    def __eq__(self, other):
        return isinstance(other, Layout) and self.shapes == other.shapes

    def __hash__(self):
        return hash(self.shapes)

    def __repr__(self):
        return f"Layout({list(self.shapes)})"


class Fields:
    """Typed fields at fixed offsets of a byte payload: ``Fields([("scale", float32, 1), ("bits", uint8, m)])``."""

    __slots__ = ("spec", "nbytes")

    def __init__(self, spec: List[Tuple[str, object, int]]):
        self.spec, off = [], 0
        for name, dtype, count in spec:
            dt = np.dtype(dtype)
            self.spec.append((name, dt, int(count), off))
            off += dt.itemsize * int(count)
        self.nbytes = off

    def views(self, payload: np.ndarray) -> dict:
        """Return ``{name: typed view}`` into ``payload`` (a 1-D uint8 array of ``nbytes``)."""
        if payload.dtype != np.uint8 or payload.size != self.nbytes:
            raise ValueError(f"payload must be {self.nbytes} uint8 bytes, got {payload.size} {payload.dtype}")
        return {name: payload[off:off + dt.itemsize * count].view(dt) for name, dt, count, off in self.spec}

    def new(self):
        """Allocate a zeroed payload and return ``(payload, views)``."""
        payload = np.zeros(self.nbytes, np.uint8)
        return payload, self.views(payload)


def rng_to_array(rng: np.random.Generator) -> np.ndarray:
    """Encode a generator's state as a uint8 array of JSON text (storable in ``.npz`` without pickle)."""
    return np.frombuffer(json.dumps(rng.bit_generator.state).encode(), np.uint8).copy()


def rng_from_array(rng: np.random.Generator, arr: np.ndarray) -> None:
    """Restore ``rng`` from :func:`rng_to_array`'s output."""
    rng.bit_generator.state = json.loads(bytes(np.asarray(arr, np.uint8)).decode())


class Compressor:
    """Base class: override ``compress``/``decompress`` and ``payload_spec``; see the module docstring.

    Attributes: ``summable`` (route), ``lossless`` (error feedback is pointless), ``rounds`` (allreduces per bucket:
    PowerSGD needs two; ``advance`` turns one round's reduced payload into the next round's payload).
    """

    name = "base"
    summable = False
    lossless = False
    rounds = 1

    def __init__(self, *, kernels: str = "numpy", seed=0, comm_rank: int = 0):
        self.kernels = _kernel_sets.get(kernels)
        # seed: an int or a sequence of ints (entropy for np.random.default_rng), e.g. (user seed, bucket)
        self.seed = tuple(int(v) for v in np.atleast_1d(seed))
        self.comm_rank = int(comm_rank)

    def config(self) -> dict:
        """Settings every rank must share (checked before the first payload is sent)."""
        return {"name": self.name}

    def payload_spec(self, layout: Layout) -> List[Tuple[int, np.dtype]]:
        """``[(count, dtype)]`` of the payload of each round for a bucket of ``layout`` (the analytical size)."""
        raise NotImplementedError

    def payload_nbytes(self, layout: Layout) -> int:
        return sum(c * np.dtype(d).itemsize for c, d in self.payload_spec(layout))

    def compress(self, x: np.ndarray, layout: Layout):
        """Return ``(payload, ctx)``; only ``payload`` crosses the wire."""
        raise NotImplementedError

    def advance(self, reduced, ctx):
        """Multi-round compressors: next round's ``(payload, ctx)`` from this round's reduced payload."""
        raise NotImplementedError(f"{self.name} is a one-round compressor")

    def decompress(self, payload, ctx, out=None, add: bool = False) -> np.ndarray:
        """Decode ``payload`` into ``out`` (new float32 array if None); ``add`` accumulates instead."""
        raise NotImplementedError

    def local_estimate(self, payload, ctx) -> np.ndarray:
        """What this rank's own contribution decompresses to (error feedback subtracts it)."""
        return self.decompress(payload, ctx)

    def after_reduce(self, reduced, ctx) -> None:
        """Called with the final reduced payload (PowerSGD keeps Q for its warm start)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    @staticmethod
    def _out(out, n):
        return np.empty(n, np.float32) if out is None else out

    def _memo(self, key, build):
        """Return ``build()`` computed once per ``key`` (payload field layouts are rebuilt p + 1 times a step)."""
        cache = self.__dict__.setdefault("_memo_cache", {})
        if key not in cache:
            cache[key] = build()
        return cache[key]
