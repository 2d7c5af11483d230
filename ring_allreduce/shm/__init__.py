"""Node shared memory: arrays resident in an MPI shared window, and the per-communicator node topology.

``shared_empty``/``shared_zeros`` allocate arrays that the ``"shm"`` and ``"hierarchical"`` allreduce paths read
straight out of the peers' memory (``algorithm="auto"`` routes them there); ``SharedAllocator`` is the
``alloc(n, dtype)`` hook for the trainer's gradient buckets; ``release(comm)`` frees what was cached for a
communicator. Importing this package does not initialize MPI.
"""
from .topology import ENV_PRETEND, node_count, parse_layout, release
from .window import SharedAllocator, SharedArray, SharedWindow, live_windows, lookup, shared_empty, shared_zeros

__all__ = [
    "shared_empty",
    "shared_zeros",
    "SharedArray",
    "SharedAllocator",
    "SharedWindow",
    "lookup",
    "live_windows",
    "release",
    "node_count",
    "parse_layout",
    "ENV_PRETEND",
]
