"""Run pytest on one MPI rank, sending ranks other than 0 to ``$RA_RANK_LOG_DIR/rank-K.log``.

``mpiexec -n N python -m tests.rank_pytest ARGS`` so the console shows rank 0's report only; tests/run.py prints
the other ranks' logs when the run fails. The redirect happens before pytest starts (pytest's own capture keeps a
copy of the original stdout, so redirecting later would not reach its reporter).
"""
import os
import sys


def launcher_rank() -> int:
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def main() -> int:
    rank = launcher_rank()
    log_dir = os.environ.get("RA_RANK_LOG_DIR")
    if rank > 0 and log_dir:
        os.makedirs(log_dir, exist_ok=True)
        fd = os.open(os.path.join(log_dir, f"rank-{rank}.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    import pytest

    return pytest.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
