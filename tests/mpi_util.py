"""Helpers for MPI tests: collective assertions (so one failing rank fails every rank, never hangs them)."""
import numpy as np


def all_ok(comm, ok: bool, what: str = "") -> None:
    """Assert ``ok`` on every rank: each rank learns which ranks failed, so all fail together."""
    oks = comm.allgather(bool(ok))
    bad = [r for r, v in enumerate(oks) if not v]
    assert not bad, f"{what} failed on rank(s) {bad}"


def assert_identical(comm, arr, what: str = "result") -> None:
    """Assert every rank holds bit-identical bytes."""
    arr = np.ascontiguousarray(arr)
    digests = comm.allgather(arr.tobytes())
    differing = [r for r, d in enumerate(digests) if d != digests[0]]
    assert not differing, f"{what} differs from rank 0's on rank(s) {differing}"


def rank_input(seed: int, rank: int, n: int, dtype, op: str = "sum") -> np.ndarray:
    """The deterministic input of ``rank``; any rank can build every rank's input to form a reference."""
    rng = np.random.default_rng([seed, rank, n])
    dt = np.dtype(dtype)
    if op == "prod":  # keep products small and exact
        vals = rng.choice(np.array([1, 1, 1, 2, -1]), size=n)
        return vals.astype(dt)
    if dt.kind == "f":
        return rng.standard_normal(n).astype(dt)
    return rng.integers(-1000, 1000, size=n).astype(dt)


def launch_job(n: int, cmd: list, limit_s: float, env_extra=None):
    """Run ``mpiexec -n n cmd`` from a clean environment; return (exit status, seconds, output). A job still running
    after ``limit_s`` is killed with its whole process group and the test fails (never a hung job left behind)."""
    import os
    import signal
    import subprocess
    import time

    import pytest

    from tests.run import ROOT, mpiexec_prefix

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "OMPI_", "HYDRA_", "MPIR_"))}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra or {})
    t0 = time.monotonic()
    proc = subprocess.Popen(mpiexec_prefix(n) + cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"job did not end within {limit_s} s:\n{out}")
    return proc.returncode, time.monotonic() - t0, out


def raised(fn):
    """The MismatchError/ArgumentError ``fn()`` raises, or None."""
    from ring_allreduce import ArgumentError, MismatchError

    try:
        fn()
    except (MismatchError, ArgumentError) as e:
        return e
    return None


def same_error_everywhere(comm, err, cls, *needles) -> None:
    """Assert every rank raised the same ``cls`` error, whose message contains each of ``needles``."""
    msgs = comm.allgather(None if err is None else (type(err).__name__, str(err)))
    all_ok(comm, err is not None and isinstance(err, cls), f"expected {cls.__name__}, got {msgs[comm.rank]}")
    assert len(set(msgs)) == 1, f"ranks raised different errors: {msgs}"
    for needle in needles:
        assert needle in msgs[0][1], msgs[0][1]
