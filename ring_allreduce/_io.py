"""Atomic file writes: a temporary file in the same folder, then ``os.replace`` (a kill never leaves half a file)."""
from __future__ import annotations

import json
import os
import tempfile


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically, creating the folder if needed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str, doc, **dump_kw) -> None:
    """Write ``doc`` as JSON to ``path`` atomically (``dump_kw`` go to ``json.dumps``; default ``indent=1``)."""
    dump_kw.setdefault("indent", 1)
    atomic_write_text(path, json.dumps(doc, **dump_kw))
