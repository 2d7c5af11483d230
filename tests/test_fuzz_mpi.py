"""Random calls, agreed or disagreeing on one rank: every rank ends the same way, and nothing hangs.

A generator seeded the same on every rank draws each call: count (0, 1, p-1, p+1, odd, large), dtype, op,
algorithm (every registered one and ``auto``), kernel, entry point (one-shot with and without the agreement check,
plan, nonblocking plan, ``iallreduce``), in place or not, flat or 2-D. About 40% of the calls then give one rank
one thing different or wrong: count, dtype, op, algorithm, kernel, a read-only ``out`` (or read-only ``x`` in
place), a non-contiguous ``x``, an ``out`` of the wrong shape. The seed and p are in every failure message.

* Agreed calls must equal ``MPI.Allreduce``'s integers exactly (integer ``avg`` floor-divides the sum) and leave
  bit-identical floats on every rank, within the rounding bound of ``test_allreduce_mpi.reference``; the
  result is ``out`` when one is given (``x`` in place) and an out-of-place call leaves ``x`` as it was.
* Disagreeing calls (checked entry points only: with the check off a disagreement is the caller's error, as in MPI)
  must raise the same error, message included, on every rank: ``MismatchError`` for a different argument,
  ``ArgumentError`` for an invalid one, naming the rank. Then every rank makes the same call without the fault,
  which must work: the communicator is clean after an error.
* One-shot calls run twice: the second finds the validated signature cached (the hot path); after a fault the
  good ranks take the hot path while the bad rank is validated afresh, and both must still meet.

``RA_FUZZ_CASES`` / ``RA_FUZZ_SEED`` change the amount and the draw.
"""
import os

import numpy as np
import pytest

from ring_allreduce import ArgumentError, MismatchError, algorithms, allreduce, allreduce_init, iallreduce, kernels
from tests.mpi_util import rank_input
from tests.test_allreduce_mpi import reference

pytestmark = pytest.mark.mpi

DTYPES = (np.float16, np.float32, np.float64, np.int32, np.int64)
OPS = ("sum", "avg", "prod", "min", "max")
PATHS = ("oneshot", "oneshot-nocheck", "plan", "plan-start", "iallreduce")
FAULTS = ("count", "dtype", "op", "algorithm", "kernel", "readonly", "noncontiguous", "out-shape")
LOCAL_FAULTS = ("readonly", "noncontiguous", "out-shape")  # a single rank can get these wrong by itself
KERNELS = [k for k in kernels.names("numpy") if k != "auto"]  # numba only where it is installed
CASES = int(os.environ.get("RA_FUZZ_CASES", "48"))
SEED = int(os.environ.get("RA_FUZZ_SEED", "20261130"))


@pytest.fixture(scope="module")
def comm():
    from mpi4py import MPI

    return MPI.COMM_WORLD


def draw(rng, p):
    """One call's description (the same on every rank) and, maybe, its fault on one rank."""
    n = int(rng.choice([0, 1, max(p - 1, 1), p + 1, 7, 1000, 4099, 65_537]))
    case = {
        "n": n, "dtype": DTYPES[rng.integers(len(DTYPES))], "op": OPS[rng.integers(len(OPS))],
        "algorithm": str(rng.choice(["auto", "auto", *algorithms.names()])),
        "kernel": [None, *KERNELS][rng.integers(len(KERNELS) + 1)], "path": PATHS[rng.integers(len(PATHS))],
        "inplace": bool(rng.integers(2)), "shape2d": bool(rng.integers(2)) and n % 2 == 0 and n > 0,
        "fault": None, "bad_rank": int(rng.integers(p)),
    }
    if case["algorithm"] == "mpi" and case["dtype"] is np.float16:
        case["dtype"] = np.float32  # native float16 depends on the MPI library (as in test_allreduce_mpi)
    if case["path"] != "oneshot-nocheck" and rng.random() < 0.5:
        choices = [f for f in (FAULTS if p > 1 else LOCAL_FAULTS) if f != "kernel" or len(KERNELS) > 1]
        case["fault"] = choices[rng.integers(len(choices))]
        if case["fault"] == "out-shape":
            case["inplace"] = False
        if case["fault"] == "noncontiguous" and n < 2:  # 0 or 1 element: every view is contiguous
            case["fault"] = "readonly"
        if case["fault"] == "kernel" and case["kernel"] is None:  # the default may be either: name one
            case["kernel"] = KERNELS[0]
    return case


def other(values, current, rng):
    rest = [v for v in values if v != current]
    return rest[rng.integers(len(rest))]


def build(case, rank, p, rng):
    """This rank's (x, out, kwargs) for the case, its fault applied if it is the bad rank."""
    n, dtype, op, algorithm, kernel = case["n"], case["dtype"], case["op"], case["algorithm"], case["kernel"]
    mine = case["fault"] if rank == case["bad_rank"] else None
    if mine == "count":
        n += 1
    elif mine == "dtype":
        dtype = other(DTYPES, dtype, rng)
    elif mine == "op":
        op = other(OPS, op, rng)
    elif mine == "algorithm":
        algorithm = other(["auto", *algorithms.names()], algorithm, rng)
    elif mine == "kernel":
        kernel = other(KERNELS, kernel, rng)
    x = rank_input(case["seed"], rank, n, dtype, case["op"])
    if case["shape2d"] and x.size == case["n"]:
        x = x.reshape(2, -1)
    if mine == "noncontiguous":
        wide = np.empty(2 * x.size, x.dtype)
        wide[::2] = x.reshape(-1)
        x = wide[::2]
    if case["inplace"]:
        out = x
    else:
        out = np.empty(x.size + 1 if mine == "out-shape" else x.shape, x.dtype)
    if mine == "readonly":
        out.flags.writeable = False
    return x, out, {"op": op, "algorithm": algorithm, "kernel": kernel}


def run_call(case, x, out, kw, comm):
    path = case["path"]
    if path in ("oneshot", "oneshot-nocheck"):
        return allreduce(x, comm, out=out, check=path == "oneshot", **kw)
    if path == "iallreduce":
        return iallreduce(x, comm, out=out, **kw).wait()
    with allreduce_init(x, comm, out=out, **kw) as plan:
        if path == "plan":
            return plan()
        plan.start()
        while not plan.test():
            pass
        return plan.wait()


def outcome_of(fn):
    """``(result, None)`` or ``(None, (error type, message))``: any exception, so no rank leaves the others waiting."""
    try:
        return fn(), None
    except Exception as e:  # noqa: BLE001 - recorded and compared across ranks, never swallowed
        return None, (type(e).__name__, str(e))


def check_agreed(case, x, x0, out, res, comm, where, failures):
    """An agreed call's result: exact or within the bound, identical everywhere, in the right array."""
    if res is not out:
        failures.append(f"{where}: the result is not the given out array")
    if out is not x and not np.array_equal(x.reshape(-1), x0.reshape(-1)):
        failures.append(f"{where}: an out-of-place call changed x")
    flat = np.ascontiguousarray(res).reshape(-1)
    if res.shape != x.shape or res.dtype != x.dtype:
        failures.append(f"{where}: result shape/dtype {res.shape} {res.dtype}")
    everyone = comm.allgather(flat.tobytes())
    if len(set(everyone)) != 1:
        failures.append(f"{where}: results differ across ranks")
    ref, bound = reference(comm, case["n"], case["dtype"], case["op"], case["seed"])
    if flat.dtype.kind == "i":
        if not np.array_equal(flat, ref):
            failures.append(f"{where}: integers differ from the exact reduction")
    else:
        err = np.abs(flat.astype(np.float64) - ref)
        if not np.all(err <= bound):
            worst = int(np.argmax(err - bound))
            failures.append(f"{where}: element {worst} is {flat[worst]!r}, reference {ref[worst]!r}")


def test_random_calls_end_the_same_on_every_rank(comm):
    p, rank = comm.size, comm.rank
    rng = np.random.default_rng([SEED, p])
    failures = []
    for i in range(CASES):
        case = draw(rng, p)
        case["seed"] = SEED + i
        where = f"case {i} (p={p}, RA_FUZZ_SEED={SEED}): {case}"
        fault_rng = np.random.default_rng([SEED, p, i])  # the same on every rank: only the bad rank uses it
        x, out, kw = build(case, rank, p, fault_rng)
        res, outcome = outcome_of(lambda: run_call(case, x, out, kw, comm))
        outcomes = comm.allgather(outcome)
        more = 2 if case["path"].startswith("oneshot") else 1  # a second one-shot call finds the signature cached
        if case["fault"] is not None:
            expected = ArgumentError if case["fault"] in LOCAL_FAULTS else MismatchError
            if any(o is None for o in outcomes) or len(set(outcomes)) != 1:
                failures.append(f"{where}: expected one error everywhere, got {outcomes}")
            elif outcomes[0][0] != expected.__name__ or (p > 1 and f"[{case['bad_rank']}]" not in outcomes[0][1]):
                failures.append(f"{where}: expected {expected.__name__} naming rank {case['bad_rank']}, "
                                f"got {outcomes[0]}")
            case = dict(case, fault=None)  # then the same call without the fault: the communicator must be clean
        elif any(o is not None for o in outcomes):
            failures.append(f"{where}: an agreed call raised: {outcomes}")
            continue
        else:
            x0 = rank_input(case["seed"], rank, case["n"], case["dtype"], case["op"])
            check_agreed(case, x, x0, out, res, comm, f"{where} (call 1)", failures)
            more -= 1
        for attempt in range(more):
            x, out, kw = build(case, rank, p, fault_rng)
            x0 = x.copy()
            res, outcome = outcome_of(lambda: run_call(case, x, out, kw, comm))
            outcomes = comm.allgather(outcome)
            if any(o is not None for o in outcomes):
                failures.append(f"{where}: the call without the fault raised: {outcomes}")
                break
            check_agreed(case, x, x0, out, res, comm, f"{where} (again, {attempt + 1})", failures)
    assert not failures, f"{len(failures)} of {CASES} cases went wrong:\n" + "\n".join(failures[:10])
