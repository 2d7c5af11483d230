"""Gradient compression with error feedback: compressors, memory and routes, three small registries.

- :data:`compressors` (``none``, ``fp16``, ``int8``, ``qsgd``, ``randomk``, ``topk``, ``sign``, ``powersgd``):
  ``compress(x, layout) -> (payload, ctx)`` and ``decompress(payload, ctx)``; only the payload crosses the wire.
- :data:`memories` (``none``, ``residual``): error feedback.
- :data:`routes` (``allreduce``, ``allgather``): chosen from the compressor's ``summable`` property.

:class:`CompressionState` ties them together per bucket and :func:`compressed_allreduce` is the one-call form::

    state = CompressionState(comm, "topk", ratio=0.01)   # error feedback on by default for lossy compressors
    avg = state.reduce(grad_bucket, key=0)               # mean over ranks, identical bytes on every rank
    state.end_step()
"""
from __future__ import annotations

from .compressors import make
from .compressors import registry as compressors
from .memory import registry as memories
from .routes import registry as routes
from .routes import route_for
from .state import CompressionState


def compressed_allreduce(x, state: CompressionState, key=0, layout=None):
    """Return the mean over ranks of ``x`` compressed with ``state``'s settings (see :meth:`CompressionState.reduce`)."""
    return state.reduce(x, key=key, layout=layout)


def names() -> list:
    """Registered compressor names."""
    return compressors.names()


__all__ = ["CompressionState", "compressed_allreduce", "compressors", "memories", "routes", "route_for", "make",
           "names"]
