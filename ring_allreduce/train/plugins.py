"""Trainer plugins: other subsystems add flags and hooks to ``ring-allreduce train`` without editing it.

A plugin is a module ``ring_allreduce/<package>/train_plugin.py`` (found by file name; nothing is imported until
``train`` runs) defining any of:

- ``ORDER`` (int, default 50): plugins are applied in increasing order (then by name);
- ``add_arguments(parser)``: add an argument group to the ``train`` parser;
- ``before_build(args, setup)``: runs before the optimizer exists; ``setup`` is a namespace with ``comm``,
  ``alloc`` (gradient storage allocator, None = ``numpy.empty``) and ``callbacks`` (a list) to fill in;
- ``after_build(args, trainer)``: register a comm hook (``trainer.optimizer.register_comm_hook``), replace
  ``trainer.strategy``, append to ``trainer.callbacks``;
- ``report(args, trainer, result) -> dict``: entries merged into the JSON result.
"""
from __future__ import annotations

import importlib
import os

_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def discover() -> list:
    """Import and return every ``ring_allreduce/<pkg>/train_plugin.py``, sorted by ``(ORDER, name)``."""
    mods = []
    for name in sorted(os.listdir(_PKG_DIR)):
        if os.path.isfile(os.path.join(_PKG_DIR, name, "train_plugin.py")):
            mods.append(importlib.import_module(f"ring_allreduce.{name}.train_plugin"))
    return sorted(mods, key=lambda m: (getattr(m, "ORDER", 50), m.__name__))


def call(mods, fn: str, *args) -> list:
    """Call ``fn(*args)`` on every plugin defining it; return the results."""
    return [getattr(m, fn)(*args) for m in mods if hasattr(m, fn)]
