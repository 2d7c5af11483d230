"""Shared test set-up.

Under mpiexec (tests/run.py launches ``mpiexec -n N python -m pytest -m mpi --with-mpi``) ranks other than 0 write
their pytest output to ``$RA_RANK_LOG_DIR/rank-K.log`` so the console shows one report; run.py prints those logs
when the run fails. The verdict always comes from mpiexec's exit status, which fails if any rank failed.
"""
import os
import sys

import pytest

RANK_ENV = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID")


def launcher_rank() -> int:
    for var in RANK_ENV:
        if var in os.environ:
            return int(os.environ[var])
    return 0


def pytest_configure(config):
    rank = launcher_rank()
    log_dir = os.environ.get("RA_RANK_LOG_DIR")
    if rank > 0 and log_dir:
        os.makedirs(log_dir, exist_ok=True)
        fd = os.open(os.path.join(log_dir, f"rank-{rank}.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)


def pytest_collection_modifyitems(config, items):
    """Skip GPU tests with a reason when no GPU is usable, or fail them if RING_ALLREDUCE_REQUIRE_GPU=1."""
    gpu_items = [it for it in items if it.get_closest_marker("gpu")]
    if not gpu_items:
        return
    from tests.gpu_util import gpu_unavailable_reason

    reason = gpu_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("RING_ALLREDUCE_REQUIRE_GPU") == "1":
        for it in gpu_items:
            it.add_marker(pytest.mark.xfail(reason=f"GPU required but {reason}", run=False, strict=True))
        raise pytest.UsageError(f"RING_ALLREDUCE_REQUIRE_GPU=1 but {reason}")
    for it in gpu_items:
        it.add_marker(pytest.mark.skip(reason=reason))
