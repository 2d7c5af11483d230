"""Pure parts of the parameter server: roles, shards, synchronisation steps and the analytical byte counts.

Nothing here touches MPI, so the layout and the byte model are tested without a launcher, and the benchmark
(``benchmarks/ps_compare.py``) uses the same formulas as the ``--json`` report.

Bytes are payload bytes a rank hands to MPI's send calls (what :class:`~ring_allreduce.train.transport.CountingComm`
counts), per run:

* worker: ``n * b`` per step (its gradient, one message per server shard);
* server ``s`` (shard of ``n_s`` elements): ``W * n_s * b`` per step (the shard back to each of the ``W`` workers),
  except at a synchronisation step, where instead it sends parameters *and* momentum of its shard to every other
  rank (``2 * (p - 1) * n_s * b``);
* every rank, at each synchronisation step: the step statistics (3 float64) summed with ``--algorithm``.

Per step and host the star therefore concentrates ``W * n / S * b`` on each server's link, against ``2 (p-1)/p n b``
per rank for the ring: this is why a single server's link saturates first.
"""
from __future__ import annotations

import math
from typing import List, Sequence

from ..schedules import binomial_tree, chunk_bounds, ring_allgather, ring_reduce_scatter

CONSISTENCY = ("bsp", "ssp", "asp")
STATS = 3  # rows, loss sum, correct: float64


def shard_bounds(n_params: int, servers: int) -> List[int]:
    """Offsets of the servers' contiguous shards of the flat parameter vector (sizes differ by at most one)."""
    return chunk_bounds(int(n_params), int(servers))


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return -(-int(n_train) // int(batch_size))


def is_sync_step(step: int, per_epoch: int, checkpoint_every: int = 0, max_steps: int = 0) -> bool:
    """True when the trainer needs every rank after global step ``step`` (epoch end, checkpoint, last step)."""
    nxt = step + 1
    return (nxt % per_epoch == 0 or bool(checkpoint_every and nxt % checkpoint_every == 0)
            or bool(max_steps and nxt >= max_steps))


def sync_steps(first: int, last: int, per_epoch: int, checkpoint_every: int = 0, max_steps: int = 0) -> int:
    """How many of the steps ``first .. last - 1`` are synchronisation steps."""
    return sum(is_sync_step(t, per_epoch, checkpoint_every, max_steps) for t in range(first, last))


def allreduce_bytes(algorithm: str, p: int, rank: int, count: int, itemsize: int) -> float:
    """Bytes ``rank`` sends in one allreduce of ``count`` elements: exact for ring and tree, modelled otherwise."""
    if p <= 1 or count == 0:
        return 0.0
    if algorithm == "ring":
        sent = sum(b - a for _, (a, b), _, _ in ring_reduce_scatter(rank, p, count))
        sent += sum(b - a for _, (a, b), _, _ in ring_allgather(rank, p, count))
        return float(sent * itemsize)
    if algorithm == "tree":  # the whole vector up to the parent, then down to each child
        node = binomial_tree(rank, p)
        return float((int(node.parent is not None) + len(node.children)) * count * itemsize)
    from ..bench.model import coefficients

    c = coefficients(algorithm, p, count * itemsize)
    return float(c[1]) if c is not None else math.nan


def ps_bytes(rank: int, p: int, servers: int, n_params: int, itemsize: int, steps: int, syncs: int,
             stats_algorithm: str = "ring") -> float:
    """Bytes ``rank`` sends in a parameter-server run of ``steps`` steps of which ``syncs`` synchronise."""
    workers = p - servers
    stats = syncs * allreduce_bytes(stats_algorithm, p, rank, STATS, 8)
    if rank >= servers:
        return steps * n_params * itemsize + stats
    b = shard_bounds(n_params, servers)
    n_s = b[rank + 1] - b[rank]
    return ((steps - syncs) * workers * n_s + syncs * 2 * (p - 1) * n_s) * itemsize + stats


def known(values) -> list:
    """``values`` with NaN (no model for the algorithm) as None, for JSON."""
    return [None if v != v else v for v in values]


def local_sgd_bytes(rank: int, p: int, bucket_sizes: Sequence[int], itemsize: int, sync_steps_: int,
                    averagings: int, algorithm: str = "ring") -> float:
    """Bytes ``rank`` sends with ``--local-steps``: every synchronous step allreduces the gradient buckets and the
    statistics; every averaging allreduces parameters and momentum (bucket by bucket) and 4 float64."""
    grads = sum(allreduce_bytes(algorithm, p, rank, n, itemsize) for n in bucket_sizes)
    sync = sync_steps_ * (grads + allreduce_bytes(algorithm, p, rank, STATS, 8))
    return sync + averagings * (2 * grads + allreduce_bytes(algorithm, p, rank, STATS + 1, 8))
