"""Checkpoints: one ``.npz`` (arrays + JSON metadata inside it), replaced atomically, read with ``allow_pickle=False``.

The metadata travels inside the ``.npz`` (as the UTF-8 bytes of a JSON document under ``__meta__``) so that data
and metadata are replaced by one ``os.replace``: a kill at any moment leaves either the old checkpoint or the new
one, never a mix. A human-readable copy of the metadata is written next to it (``.json``; never read back).
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from typing import Tuple

import numpy as np

FILENAME = "checkpoint.npz"
_META = "__meta__"
_TMP_PREFIX = ".tmp-"


class CheckpointError(ValueError):
    """A checkpoint file cannot be read back (truncated, not a checkpoint, or not plain data)."""


def clean_temporaries(directory: str) -> list:
    """Remove ``.tmp-*`` files a killed writer left in ``directory`` (call at start, before any writer runs)."""
    removed = []
    for name in sorted(os.listdir(directory)):
        if name.startswith(_TMP_PREFIX):
            path = os.path.join(directory, name)
            try:
                if os.path.isfile(path):
                    os.unlink(path)
                    removed.append(path)
            except OSError:  # pragma: no cover - e.g. removed by someone else meanwhile
                pass
    return removed


def path_in(directory: str) -> str:
    return os.path.join(directory, FILENAME)


def _atomic_write(path: str, write) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=d)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save(path: str, arrays: dict, meta: dict) -> None:
    """Write ``arrays`` (name -> NumPy array) and ``meta`` (JSON-able) to ``path`` atomically."""
    if _META in arrays:
        raise ValueError(f"array name {_META!r} is reserved")
    text = json.dumps(meta, sort_keys=True)
    payload = dict(arrays)
    payload[_META] = np.frombuffer(text.encode(), dtype=np.uint8)
    _atomic_write(path, lambda fh: np.savez(fh, allow_pickle=False, **payload))
    side = os.path.splitext(path)[0] + ".json"
    _atomic_write(side, lambda fh: fh.write(json.dumps(meta, indent=1, sort_keys=True).encode()))


def load(path: str) -> Tuple[dict, dict]:
    """Read a checkpoint written by :func:`save`: ``(arrays, meta)``; no pickle is ever loaded.

    Raises :class:`CheckpointError` (one readable line) for a truncated, foreign or corrupt file.
    """
    bad = f"checkpoint {path} is unreadable"
    try:
        if not zipfile.is_zipfile(path):
            raise CheckpointError(f"{bad}: not a ring_allreduce checkpoint (not an .npz archive; truncated or "
                                  "overwritten?); remove it or use another --checkpoint-dir")
        with np.load(path, allow_pickle=False) as z:
            if _META not in z.files:
                raise CheckpointError(f"{bad}: not a ring_allreduce checkpoint (no {_META} entry)")
            arrays = {k: z[k] for k in z.files if k != _META}
            meta = json.loads(z[_META].tobytes().decode())
    except CheckpointError:
        raise
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        # NumPy's own message for an object array suggests allow_pickle=True: a checkpoint never needs it
        what = "it holds Python objects, not plain arrays" if "pickle" in str(e) else f"{type(e).__name__}"
        raise CheckpointError(f"{bad}: corrupt or truncated ({what}); remove it or use another "
                              "--checkpoint-dir") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{bad}: its metadata is not a ring_allreduce checkpoint's")
    return arrays, meta


def flatten_state(prefix: str, d: dict) -> dict:
    """``{k: v}`` -> ``{prefix + k: np.asarray(v)}`` for a component's ``state_dict()`` (arrays, ints, floats, str)."""
    out = {}
    for k, v in d.items():
        a = np.asarray(v)
        if a.dtype == object:
            raise TypeError(f"state entry {prefix}{k} is not an array/int/float/str (got {type(v).__name__})")
        out[prefix + k] = a
    return out


def unflatten_state(prefix: str, arrays: dict) -> dict:
    """Inverse of :func:`flatten_state`; 0-d arrays come back as Python scalars."""
    out = {}
    for k, v in arrays.items():
        if k.startswith(prefix):
            out[k[len(prefix):]] = v.item() if v.ndim == 0 else v
    return out
