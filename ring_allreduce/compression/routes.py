"""Routes: how payloads cross the wire, chosen from the compressor's ``summable`` property, never by the user.

``allreduce``: payloads that can be summed in compressed space go through the hand-written allreduce algorithms
(``ring`` by default), one call per round. ``allgather``: fixed-size byte payloads go round the ring
allgather and every rank decompresses and sums all p payloads in rank order, so every rank gets identical bytes.
A route returns ``(sum over ranks of the decompressed contributions, this rank's last payload, ctx)``; when given a
``scratch`` dict it adds the seconds spent communicating to ``scratch["comm_s"]`` (the rest is compression work).
"""
from __future__ import annotations

import numpy as np

import time

from .._registry import Registry
from ..algorithms import auto
from .allgather import ring_allgather

registry = Registry("route")


def route_for(compressor) -> str:
    """The route a compressor's payloads take: ``"allreduce"`` if summable, else ``"allgather"``."""
    return "allreduce" if compressor.summable else "allgather"


def _timed(scratch, fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    if scratch is not None:
        scratch["comm_s"] = scratch.get("comm_s", 0.0) + time.perf_counter() - t0
    return out


def _sum(comm, payload, algorithm):
    """Sum ``payload`` over ranks into a new array: the one-shot allreduce on the communicator's transport.

    ``comm`` may be a counting proxy (it counts what the algorithm sends); the check is off because the
    compression state agreed every setting and size across ranks before the first payload.
    """
    from ..api import allreduce

    p = comm.Get_size()
    out = np.empty_like(payload)
    if p == 1 or payload.size == 0:
        out[...] = payload
        return out
    name = auto.resolve(payload.nbytes, p, payload.dtype, "sum") if algorithm == "auto" else algorithm
    return allreduce(payload, comm, op="sum", algorithm=name, out=out, check=False, kernel="numpy")


@registry.register("allreduce")
def allreduce_route(comm, compressor, x, layout, algorithm="ring", scratch=None):
    """Sum summable payloads on the ring (or tree, ...): one allreduce per round."""
    payload, ctx = compressor.compress(x, layout)
    for _ in range(compressor.rounds - 1):
        payload, ctx = compressor.advance(_timed(scratch, _sum, comm, payload, algorithm), ctx)
    reduced = _timed(scratch, _sum, comm, payload, algorithm)
    compressor.after_reduce(reduced, ctx)
    return compressor.decompress(reduced, ctx), payload, ctx


@registry.register("allgather")
def allgather_route(comm, compressor, x, layout, algorithm=None, scratch=None):
    """Ring-allgather fixed-size byte payloads, then decompress and sum them locally in rank order.

    ``scratch``: an optional dict in which the (p, nbytes) gather buffer is kept between calls.
    """
    payload, ctx = compressor.compress(x, layout)
    p, r, nb = comm.Get_size(), comm.Get_rank(), payload.size
    buf = None if scratch is None else scratch.get("gather")
    if buf is None or buf.shape != (p, nb):
        buf = np.empty((p, nb), np.uint8)
        if scratch is not None:
            scratch["gather"] = buf
    buf[r] = payload
    _timed(scratch, ring_allgather, comm, buf.reshape(-1))
    out = compressor.decompress(buf[0], ctx)
    for k in range(1, p):
        compressor.decompress(buf[k], ctx, out, add=True)
    return out, payload, ctx
