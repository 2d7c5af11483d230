"""The algorithm registry: name -> ``fn(comm, src, dst, op, kernel, div=None)``.

``src`` and ``dst`` are 1-D C-contiguous arrays of the same length and dtype (``dst is src`` for in-place), ``op``
is ``"sum"``, ``"prod"``, ``"min"`` or ``"max"`` (``avg`` arrives as ``"sum"`` with ``div=p``) and ``kernel`` a
reduction kernel from :mod:`ring_allreduce.kernels`. The function must leave identical bytes in ``dst`` on every
rank. Arguments are validated and agreed across ranks before it is called; ``p == 1`` and ``count == 0`` never
reach it. ``"auto"`` is not an entry: it is resolved by :mod:`.auto` to one of these names.
"""
from __future__ import annotations

from .._registry import Registry
from .native import native
from .rabenseifner import rabenseifner
from .recursive_doubling import recursive_doubling
from .ring import ring
from .tree import tree
from ..shm.dispatch import hierarchical, shm

registry = Registry("algorithm")
registry.register("ring", ring)
registry.register("tree", tree)
registry.register("recursive_doubling", recursive_doubling)
registry.register("rabenseifner", rabenseifner)
registry.register("mpi", native)
registry.register("shm", shm)
registry.register("hierarchical", hierarchical)


def register(name: str, fn=None, *, overwrite: bool = False):
    """Register an allreduce algorithm (usable as a decorator); see the module docstring for the signature."""
    if name == "auto":
        raise ValueError("'auto' is reserved for the size-based selector")
    return registry.register(name, fn, overwrite=overwrite)


def get(name: str):
    return registry.get(name)


def names() -> list:
    """Registered algorithm names (without ``"auto"``)."""
    return registry.names()
