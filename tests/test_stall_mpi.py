"""The polling wait: completes when the request does, reports a stall, raises naming who is missing."""
import pytest
from mpi4py import MPI
import numpy as np

from ring_allreduce.resilience.stall import StallError, wait

pytestmark = pytest.mark.mpi


@pytest.mark.timeout(30)
def test_wait_times_out_naming_the_missing_rank_and_reports_the_stall():
    comm = MPI.COMM_SELF.Dup()
    buf = np.zeros(1)
    req = comm.Irecv(buf, 0, 77)  # nobody sends: it can only time out
    stalls = []
    with pytest.raises(StallError, match=r"did not complete within 0.2 s; still waiting for rank\(s\) \[5\]") as e:
        wait([req], timeout=0.2, stall_timeout=0.05, on_stall=stalls.append, what="the test", missing=lambda: [5])
    assert e.value.missing == [5]
    assert len(stalls) == 1 and stalls[0] >= 0.05
    comm.Send(np.ones(1), 0, 77)  # now it completes
    assert wait([req], timeout=5) < 5 and buf[0] == 1.0
    comm.Free()
