"""The trainer's comm hook for compression: ``compression_hook(state, bucket)`` with a :class:`HookState`.

Follows :mod:`ring_allreduce.train.hooks`: each rank's bucket already holds its share of the mean, so the hook
returns the **sum** over ranks (``average=False``). The bucket's tensor shapes come from the model's parameter
specs (name, shape, offset), so PowerSGD sees the weight matrices and sign keeps one scale per tensor.
"""
from __future__ import annotations

from .. import backends
from .state import CompressionState


class HookState(CompressionState):
    """A :class:`CompressionState` that also knows the model's parameter layout (``specs``)."""

    __slots__ = ("specs", "layouts")

    def __init__(self, comm, compressor: str, specs, **kw):
        kw.setdefault("average", False)
        super().__init__(comm, compressor, **kw)
        self.specs = sorted(specs, key=lambda s: s.offset)
        self.layouts = {}

    def layout_of(self, bucket):
        """Shapes of the parameters stored in ``[bucket.start, bucket.stop)``, in storage order."""
        lay = self.layouts.get(bucket.index)
        if lay is None:
            lay = [tuple(s.shape) for s in self.specs if bucket.start <= s.offset < bucket.stop]
            self.layouts[bucket.index] = lay
        return lay


def compression_hook(state: HookState, bucket):
    """Compress, exchange and decompress one bucket; returns the bucket with the sum over ranks in it."""
    buf = bucket.buffer
    if backends.array_backend(buf) != backends.NUMPY:  # device gradients go through host memory
        out = state.reduce(backends.to_host(buf), key=bucket.index, layout=state.layout_of(bucket))
        backends.from_host(out.astype(buf.dtype, copy=False), buf)
        return buf
    buf[...] = state.reduce(buf, key=bucket.index, layout=state.layout_of(bucket))
    return buf


class StepCounter:
    """Trainer callback keeping the state's step equal to the trainer's global step (warm-up, resume)."""

    name = "compression_steps"

    def __init__(self, state: HookState):
        self.state = state

    def on_step_begin(self, trainer, step):
        self.state.step = int(step)


def wire_report(comm, state) -> dict:
    """Collective: the JSON entries for the training result (per-rank wire bytes per step, achieved ratios)."""
    s = state.summary() if state is not None else None
    everyone = comm.allgather(s)
    first = everyone[0] or {}
    return {
        "compression": {k: first.get(k) for k in ("compression", "error_feedback", "route", "compress_after_steps",
                                                  "compression_ratio")},
        "wire_bytes_per_step": [e["wire_bytes_per_step"] if e else None for e in everyone],
        "compression_ratio": first.get("compression_ratio"),
        "wire_ratio_vs_fp32_ring": [e["wire_ratio_vs_fp32_ring"] if e else None for e in everyone],
    }


__all__ = ["HookState", "compression_hook", "StepCounter", "wire_report"]
