"""Integer settings read from the environment at import, without raising there.

A malformed value (``RING_ALLREDUCE_SEGMENT_BYTES=abc``) must not fail the import on one rank while the others
go on to wait for it: :func:`env_int` falls back to the default and records the problem, and the transport's
settings agreement (:mod:`ring_allreduce.transport`) makes every rank raise the same error naming it.
"""
from __future__ import annotations

import os

_errors: dict = {}


def env_int(name: str, default: int) -> int:
    """``int($name)``, or ``default`` when unset; a malformed value gives ``default`` and is reported later."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        _errors.pop(name, None)
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        _errors[name] = f"{name}={raw!r} is not an integer"
        return default
    _errors.pop(name, None)
    return value


def env_errors() -> list:
    """The problems :func:`env_int` found (strings), for the settings agreement."""
    return list(_errors.values())
