"""Sizes and thresholds of the node-aware paths (read from the environment at import; agreed across ranks by the
transport when a communicator's first call runs, see :mod:`ring_allreduce.transport`)."""
from __future__ import annotations

from ..settings import env_int

#: segment for reduce-then-push (cache-sized, so the pushed result is still in cache); env overrides
SEGMENT_BYTES = env_int("RING_ALLREDUCE_SHM_SEGMENT_BYTES", 512 * 1024)
#: round size of the copy-in path (per round, the copied data stays in cache until it is reduced)
ROUND_BYTES = env_int("RING_ALLREDUCE_SHM_ROUND_BYTES", 1024 * 1024)
#: ``auto`` thresholds, measured with benchmarks/shm.py at p=2 (README table): resident arrays from
#: ``RESIDENT_MIN_BYTES`` up go to ``shm`` (below, the flat table's pick is faster: the path has two syncs);
#: ordinary arrays from ``COPY_IN_MIN_BYTES`` up go to the copy-in path, but only when the node is not
#: oversubscribed (its barrier-per-round spins badly when ranks share cores). Environment variables override;
#: ``RING_ALLREDUCE_SHM_COPY_IN_BYTES=-1`` turns the copy-in routing off.
RESIDENT_MIN_BYTES = env_int("RING_ALLREDUCE_SHM_RESIDENT_BYTES", 256 * 1024)
COPY_IN_MIN_BYTES = env_int("RING_ALLREDUCE_SHM_COPY_IN_BYTES", 256 * 1024)
#: below this ``auto`` keeps the flat algorithms even across nodes: the node-aware paths synchronize inside the
#: node on every call, which small messages cannot amortize, and small-message latency must not pay the routing
HIERARCHICAL_MIN_BYTES = env_int("RING_ALLREDUCE_HIERARCHICAL_BYTES", 64 * 1024)
_ROUTE_MIN_BYTES = min(RESIDENT_MIN_BYTES, HIERARCHICAL_MIN_BYTES,
                       COPY_IN_MIN_BYTES if COPY_IN_MIN_BYTES >= 0 else RESIDENT_MIN_BYTES)
