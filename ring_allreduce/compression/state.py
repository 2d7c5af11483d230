"""Compression state and the compressed allreduce of one bucket: compressor + memory + route, bytes counted.

:class:`CompressionState` owns, per bucket key, a compressor instance (its generator and PowerSGD's Q), an
error-feedback memory and the gather buffer; it validates its settings in ``__init__`` (conflicting ones are
rejected), agrees them across ranks before a bucket's first payload, and counts the bytes this rank hands to MPI.
"""
from __future__ import annotations

import json
import time

import numpy as np

from .. import algorithms
from ..errors import MismatchError
from .base import Layout
from .compressors import make as make_compressor
from .kernels import registry as kernel_registry
from .memory import registry as memory_registry
from .routes import allreduce_route, route_for
from .routes import registry as route_registry
from .wire import counting, ring_allreduce_bytes


class _Bucket:
    __slots__ = ("layout", "compressor", "memory", "scratch")

    def __init__(self, layout, compressor, mem):
        self.layout, self.compressor, self.memory, self.scratch = layout, compressor, mem, {}


class CompressionState:
    """Settings and per-bucket state of gradient compression on ``comm``.

    Args:
        compressor: a name from the compressor registry (``none``, ``fp16``, ``int8``, ``qsgd``, ``randomk``,
            ``topk``, ``sign``, ``powersgd``).
        ratio: fraction of elements kept by ``topk``/``randomk`` (default 0.01); rejected for other compressors.
        powersgd_rank: rank of the PowerSGD approximation (default 2); rejected for other compressors.
        qsgd_levels: QSGD's number of levels s (default 127); rejected for other compressors.
        error_feedback: residual memory on/off; None means on for every lossy compressor. True with the
            lossless ``none`` is rejected (there is no error to feed back).
        compress_after_steps: steps sent uncompressed first (warm-up), as PyTorch's ``start_powerSGD_iter``.
        seed: seed of every compressor generator (random-k indices and PowerSGD's Q agree across ranks).
        kernels: compression kernel set (``numpy`` or ``numba``).
        algorithm: allreduce algorithm for the summable route.
        average: return the mean over ranks (each input is divided by p first, so float16 cannot overflow);
            False returns the sum.
        compressor_options: further compressor options: ``qsgd_chunk`` (elements per QSGD norm, default 512),
            ``min_compression_rate``, ``warm_start``, ``orthogonalization`` (PowerSGD).
    """

    __slots__ = ("comm", "wire", "name", "options", "error_feedback", "compress_after_steps", "seed", "kernels",
                 "algorithm", "average", "route", "step", "stats", "_buckets", "_pending", "_plain", "_last_step")

    def __init__(self, comm, compressor: str = "none", *, ratio=None, powersgd_rank=None, qsgd_levels=None,
                 error_feedback=None, compress_after_steps: int = 0, seed: int = 0, kernels: str = "numpy",
                 algorithm: str = "ring", average: bool = True, compressor_options=None):
        self.options = dict(compression_ratio=ratio, powersgd_rank=powersgd_rank, qsgd_levels=qsgd_levels,
                            **(compressor_options or {}))
        kernel_registry.get(kernels)
        probe = make_compressor(compressor, kernels=kernels, seed=seed, **self.options)  # validates the options
        if error_feedback and probe.lossless:
            raise ValueError(f"error_feedback=True conflicts with the lossless compressor {compressor!r}: there is "
                             "no compression error to feed back")
        if not (isinstance(compress_after_steps, (int, np.integer)) and compress_after_steps >= 0):
            raise ValueError(f"compress_after_steps must be an integer >= 0, got {compress_after_steps!r}")
        if algorithm != "auto":
            algorithms.get(algorithm)
        self.comm, self.wire = comm, counting(comm)
        self.name, self.kernels, self.seed = compressor, kernels, int(seed)
        self.error_feedback = (not probe.lossless) if error_feedback is None else bool(error_feedback)
        self.compress_after_steps, self.algorithm, self.average = int(compress_after_steps), algorithm, bool(average)
        self.route = route_for(probe)
        self.step = 0
        self.stats = {"wire_bytes": 0, "raw_bytes": 0, "payload_bytes": 0, "reference_wire_bytes": 0, "calls": 0,
                      "steps": 0, "hook_s": 0.0, "comm_s": 0.0}
        self._last_step = None
        self._buckets, self._pending = {}, {}
        self._plain = make_compressor("none")

    # -- settings that must agree -------------------------------------------------------------------------------
    def config(self) -> dict:
        return {"compressor": self.name, "options": {k: v for k, v in self.options.items() if v is not None},
                "error_feedback": self.error_feedback, "compress_after_steps": self.compress_after_steps,
                "seed": self.seed, "algorithm": self.algorithm, "average": self.average}

    def _bucket(self, key, layout, n) -> _Bucket:
        b = self._buckets.get(key)
        if b is not None:
            if b.layout.size != n or (layout is not None and Layout.of(layout, n) != b.layout):
                raise ValueError(f"bucket {key!r} changed shape: was {b.layout}, now {n} elements / {layout}")
            return b
        lay = Layout.of(layout, n)
        mine = {"key": repr(key), "shapes": [list(s) for s in lay.shapes], **self.config()}
        everyone = self.comm.allgather(json.dumps(mine, sort_keys=True))
        if len(set(everyone)) > 1:
            diffs = {}
            for r, text in enumerate(everyone):
                for field, value in json.loads(text).items():
                    diffs.setdefault(field, {})[r] = value
            diffs = {f: v for f, v in diffs.items() if len(set(map(json.dumps, v.values()))) > 1}
            raise MismatchError("ranks disagree on compression settings of bucket " + repr(key) + ": " +
                                "; ".join(f"{f}: {v}" for f, v in diffs.items()), diffs)
        comp = make_compressor(self.name, kernels=self.kernels, seed=(self.seed, _key_int(key)),
                                comm_rank=self.comm.Get_rank(), **self.options)
        mem = memory_registry.get("residual" if self.error_feedback else "none")()
        b = self._buckets[key] = _Bucket(lay, comp, mem)
        pending = self._pending.pop(_key_str(key), None)
        if pending:
            comp.load_state_dict(pending.get("compressor", {}))
            mem.load_state_dict(pending.get("memory", {}))
        return b

    # -- the compressed allreduce -------------------------------------------------------------------------------
    def reduce(self, x, key=0, layout=None) -> np.ndarray:
        """Return the mean (or sum) over ranks of ``x`` through the compressor; a new array of ``x``'s dtype.

        Args:
            x: this rank's bucket, a 1-D NumPy float array (the same size on every rank for the same ``key``).
            key: the bucket's identity (int or str), under which its memory and compressor state are kept.
            layout: the shapes of the tensors packed in the bucket (PowerSGD needs them; sign uses one scale per
                tensor); None means one flat tensor.
        """
        x = np.ascontiguousarray(x).reshape(-1)
        n, p = x.size, self.comm.Get_size()
        b = self._bucket(key, layout, n)
        xs = np.divide(x, p, dtype=np.float32) if (self.average and p > 1) else x.astype(np.float32)
        before, t0 = self.wire.sent_bytes, time.perf_counter()
        b.scratch["comm_s"] = 0.0
        if self.step < self.compress_after_steps:
            out, payload, _ = allreduce_route(self.wire, self._plain, xs, b.layout, self.algorithm, b.scratch)
        else:
            comp = b.compressor
            compensated = b.memory.compensate(xs)
            out, payload, ctx = route_registry.get(self.route)(self.wire, comp, compensated, b.layout,
                                                                self.algorithm, b.scratch)
            if self.error_feedback:
                b.memory.update(compensated, comp.local_estimate(payload, ctx))
        out = out.astype(x.dtype, copy=False)
        self.stats["hook_s"] += time.perf_counter() - t0
        self.stats["comm_s"] += b.scratch["comm_s"]
        self._account(b, before)
        return out

    def _account(self, b, before):
        plain = self.step < self.compress_after_steps
        sizes = b.scratch.get("sizes")
        if sizes is None:  # (payload bytes plain, compressed; the fp32 ring's wire bytes), once per bucket
            p, r = self.comm.Get_size(), self.comm.Get_rank()
            sizes = b.scratch["sizes"] = (self._plain.payload_nbytes(b.layout), b.compressor.payload_nbytes(b.layout),
                                          ring_allreduce_bytes(r, p, b.layout.size, 4))
        s = self.stats
        s["wire_bytes"] += self.wire.sent_bytes - before
        s["raw_bytes"] += 4 * b.layout.size
        s["payload_bytes"] += sizes[0] if plain else sizes[1]
        s["reference_wire_bytes"] += sizes[2]
        s["calls"] += 1
        if self._last_step != self.step:  # steps in which this rank communicated (per-step figures)
            s["steps"] += 1
            self._last_step = self.step

    def expected_wire_bytes(self, key) -> int:
        """The analytical bytes this rank sends for bucket ``key`` (ring algorithm), from the payload spec."""
        b = self._buckets[key]
        comp = b.compressor if self.step >= self.compress_after_steps else self._plain
        p, r = self.comm.Get_size(), self.comm.Get_rank()
        if comp.summable:
            return sum(ring_allreduce_bytes(r, p, c, np.dtype(d).itemsize) for c, d in comp.payload_spec(b.layout))
        return (p - 1) * comp.payload_nbytes(b.layout) if p > 1 else 0

    def end_step(self) -> None:
        """Mark the end of an optimizer step (warm-up counting)."""
        self.step += 1

    def summary(self) -> dict:
        """Totals and ratios for the training JSON: wire bytes per step on this rank and compression ratios."""
        s = self.stats
        steps = max(s["steps"], 1)
        return {
            "compression": self.name, "error_feedback": self.error_feedback, "route": self.route,
            "compress_after_steps": self.compress_after_steps, "steps": s["steps"],
            "wire_bytes": s["wire_bytes"], "wire_bytes_per_step": s["wire_bytes"] / steps,
            "payload_bytes_per_step": s["payload_bytes"] / steps,
            # seconds per step in the compressed allreduce, and the part of it not spent communicating
            "hook_s_per_step": s["hook_s"] / steps, "codec_s_per_step": (s["hook_s"] - s["comm_s"]) / steps,
            "compression_ratio": s["raw_bytes"] / s["payload_bytes"] if s["payload_bytes"] else None,
            "wire_ratio_vs_fp32_ring": (s["reference_wire_bytes"] / s["wire_bytes"]) if s["wire_bytes"] else None,
        }

    # -- checkpoints --------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """This rank's state as ``{str: ndarray}`` (storable with ``np.savez``, loadable without pickle)."""
        d = {"step": np.array(self.step, np.int64), "config": _text(json.dumps(self.config(), sort_keys=True))}
        for key, b in self._buckets.items():
            for part, obj in (("compressor", b.compressor), ("memory", b.memory)):
                for k, v in obj.state_dict().items():
                    d[f"bucket.{_key_str(key)}.{part}.{k}"] = np.asarray(v)
        for key, parts in self._pending.items():
            for part, entries in parts.items():
                for k, v in entries.items():
                    d.setdefault(f"bucket.{key}.{part}.{k}", v)
        return d

    def gather_state_dict(self) -> dict:
        """Collective: every rank's :meth:`state_dict`, keys prefixed ``rank{r}.``, plus ``size`` (for rank 0 to save)."""
        everyone = self.comm.allgather(self.state_dict())
        d = {"size": np.array(len(everyone), np.int64)}
        for r, sd in enumerate(everyone):
            d.update({f"rank{r}.{k}": v for k, v in sd.items()})
        return d

    def load_state_dict(self, d: dict) -> None:
        """Restore from :meth:`state_dict` or :meth:`gather_state_dict` output.

        With a gathered dict saved at the same p, each rank takes its own entries (bitwise resume). At a different
        p, the shared state (generators, PowerSGD's Q) comes from rank 0's entries and the per-rank error memory
        starts from zero. A checkpoint written with other compression settings is rejected.
        """
        if "size" in d:
            saved_p, r = int(np.asarray(d["size"])), self.comm.Get_rank()
            src = r if saved_p == self.comm.Get_size() else 0
            prefix = f"rank{src}."
            d_local = {k[len(prefix):]: v for k, v in d.items() if k.startswith(prefix)}
            if src != r or saved_p != self.comm.Get_size():
                d_local = {k: v for k, v in d_local.items() if ".memory." not in k}
            d = d_local
        if "config" in d:
            # the settings that give the saved state its meaning (algorithm and warm-up length may change)
            keys = ("compressor", "options", "error_feedback", "seed", "average")
            saved = json.loads(bytes(np.asarray(d["config"], np.uint8)).decode())
            now = json.loads(json.dumps(self.config(), sort_keys=True))
            if any(saved.get(k) != now.get(k) for k in keys):
                raise ValueError(f"checkpoint was written with compression settings "
                                 f"{ {k: saved.get(k) for k in keys} }; now { {k: now.get(k) for k in keys} }")
        self.step = int(np.asarray(d.get("step", 0)))
        pending = {}
        for k, v in d.items():
            if k.startswith("bucket."):
                _, key, part, name = k.split(".", 3)
                pending.setdefault(key, {}).setdefault(part, {})[name] = np.asarray(v)
        self._pending = pending
        for key, b in list(self._buckets.items()):
            parts = self._pending.pop(_key_str(key), {})
            b.compressor.load_state_dict(parts.get("compressor", {}))
            b.memory.load_state_dict(parts.get("memory", {}))


def _key_str(key) -> str:
    return str(key).replace(".", "_")


def _key_int(key) -> int:
    if isinstance(key, (int, np.integer)):
        return int(key)
    import zlib

    return zlib.crc32(str(key).encode())


def _text(s: str) -> np.ndarray:
    return np.frombuffer(s.encode(), np.uint8).copy()
