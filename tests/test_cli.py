"""The command line: ``info`` under mpiexec, and the abort hook that names the failing rank (no hang)."""
import json
import os
import subprocess
import sys
import textwrap
import time

from tests.run import ROOT, mpiexec_prefix


def _run(args, timeout=120, **kw):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("RA_RANK_LOG_DIR", None)
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT, **kw)


def test_info_reports_mpi_and_backends():
    res = _run(mpiexec_prefix(2) + [sys.executable, "-m", "ring_allreduce", "info", "--json"])
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["ranks"] == 2
    assert report["mpi_library"]
    assert {"ring", "tree", "recursive_doubling", "rabenseifner", "mpi", "auto"} <= set(report["algorithms"])
    assert report["backends"]["numpy"]["available"] is True
    for b in report["backends"].values():  # an unavailable backend says why
        assert b["available"] or b["detail"]


def test_unknown_subcommand_is_an_error():
    res = _run([sys.executable, "-m", "ring_allreduce", "nope"])
    assert res.returncode == 2 and "valid: info" in res.stderr


def test_exception_on_one_rank_aborts_the_job_naming_it(tmp_path):
    script = tmp_path / "boom.py"
    script.write_text(textwrap.dedent("""
        import numpy as np
        from mpi4py import MPI
        from ring_allreduce import abort, allreduce
        abort.install()
        comm = MPI.COMM_WORLD
        if comm.rank == 1:
            raise RuntimeError("injected failure")
        allreduce(np.ones(4), comm)  # rank 0 would wait here forever without the abort
    """))
    t0 = time.time()
    res = _run(mpiexec_prefix(2) + [sys.executable, str(script)], timeout=60)
    assert res.returncode != 0
    assert "rank 1 of 2 failed" in res.stderr and "injected failure" in res.stderr
    assert time.time() - t0 < 30


def test_the_abort_waits_until_the_launcher_took_the_report():
    """abort() calls MPI_Abort only once the pipe to the launcher is empty (MPICH under load lost an unread report)."""
    import threading

    from ring_allreduce.abort import drained

    r, w = os.pipe()
    try:
        os.write(w, b"ring-allreduce: rank 1 of 2 failed\n")
        t0 = time.monotonic()
        assert drained(w, limit=0.2) is False  # nobody reads: bounded wait, then give up
        assert 0.2 <= time.monotonic() - t0 < 2
        threading.Timer(0.1, os.read, (r, 4096)).start()
        assert drained(w, limit=5) is True  # the reader took it
    finally:
        os.close(r)
        os.close(w)
    with open(os.devnull, "w") as fh:  # not a pipe: nothing to wait for
        assert drained(fh.fileno(), limit=5) is True
