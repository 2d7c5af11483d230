"""Rank 0 merges every rank's timeline into one valid Chrome trace."""
import os
import tempfile

import pytest
from mpi4py import MPI

from ring_allreduce.resilience.timeline import Timeline, load
from tests.mpi_util import all_ok

pytestmark = pytest.mark.mpi


@pytest.mark.timeout(30)
def test_merged_trace_has_every_rank_and_phase():
    comm = MPI.COMM_WORLD
    r, p = comm.Get_rank(), comm.Get_size()
    d = comm.bcast(tempfile.mkdtemp(prefix="ra-tl-") if r == 0 else None, root=0)
    path = os.path.join(d, "trace.json")
    tl = Timeline(rank=r)
    for step in range(3):
        with tl.span("compute", step=step):
            pass
        with tl.span("wait", step=step):
            comm.Barrier()
        with tl.span("comm", step=step):
            comm.Barrier()
    out = tl.gather_and_write(comm, path)
    ok = True
    if r == 0:
        events = load(out)
        xs = [e for e in events if e["ph"] == "X"]
        ok = {e["pid"] for e in xs} == set(range(p))
        ok &= all(sum(1 for e in xs if e["pid"] == q and e["name"] == ph) == 3
                  for q in range(p) for ph in ("compute", "wait", "comm"))
        # on one host the wall-clock timestamps line up: every rank's step-2 comm starts after all step-1 waits
        ends = max(e["ts"] + e["dur"] for e in xs if e["name"] == "wait" and e["args"]["step"] == 1)
        starts = min(e["ts"] for e in xs if e["name"] == "comm" and e["args"]["step"] == 2)
        ok &= starts >= ends - 1000.0  # 1 ms of slack for clock reads
        os.unlink(out)
        os.rmdir(d)
    else:
        ok = out is None
    all_ok(comm, ok, "merged timeline")
