"""Launch one ``ring-allreduce train`` job under ``mpiexec`` and return its ``--json`` result (benchmarks' helper)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_train(ranks: int, train_args: list, heavy_yield: bool = True, timeout: float = 1200) -> dict:
    """Run ``mpiexec -n ranks ring-allreduce train TRAIN_ARGS --quiet --json TMP``; return the parsed result.

    One BLAS/Numba thread per rank. With ``heavy_yield`` MPICH is told to yield while it waits
    (``MPIR_CVAR_ENABLE_HEAVY_YIELD=1``): its ranks busy-poll, and more ranks than cores then steal each other's
    time slices inside every collective (measured here: 29-35 ms instead of 23 ms per plain synchronous step, p=4
    on 2 cores). Tests do the same (tests/run.py).
    """
    sys.path.insert(0, ROOT)
    from tests.run import mpiexec_prefix

    out = tempfile.NamedTemporaryFile(suffix=".json", delete=False).name
    cmd = mpiexec_prefix(ranks) + [sys.executable, "-m", "ring_allreduce", "train", *map(str, train_args),
                                   "--quiet", "--json", out]
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", PYTHONPATH=ROOT)
    if heavy_yield:
        env["MPIR_CVAR_ENABLE_HEAVY_YIELD"] = "1"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
        with open(out) as fh:
            return json.load(fh)
    finally:
        os.unlink(out)
