"""Compression inside the trainer (run under ``mpiexec -n N``, N = 1..5): flags, JSON report, checkpoint/resume.

Resume: train 8 steps straight; train 4 steps with a checkpoint, then a fresh trainer loads it and trains to
step 8. The parameters must be bitwise identical, which needs the error-feedback memory, the generators and
PowerSGD's warm-start Q restored exactly (dropping any of them changes the next update).
"""
import numpy as np
import pytest

from ring_allreduce.compression import names, train_plugin
from ring_allreduce.compression.hook import HookState
from ring_allreduce.train import cli
from tests.mpi_util import all_ok, assert_identical

pytestmark = pytest.mark.mpi

BASE = ["--hidden", "24,12", "--bucket-mb", "0.002", "--quiet", "--batch-size", "12", "--lr", "0.05",
        "--overlap", "none", "--seed", "3", "--algorithm", "ring"]


def _world():
    from mpi4py import MPI

    return MPI.COMM_WORLD


def _trainer(argv, comm):
    args = cli.parse(argv, [train_plugin])
    trainer = cli.build(args, comm)
    train_plugin.after_build(args, trainer)
    return args, trainer


@pytest.mark.parametrize("name", names())
def test_resume_keeps_compression_state(tmp_path_factory, name):
    comm = _world()
    d = comm.bcast(str(tmp_path_factory.mktemp("ck")) if comm.Get_rank() == 0 else None, root=0)
    flags = BASE + ["--compression", name] + (["--compression-ratio", "0.05"] if name in ("topk", "randomk") else [])
    _, straight = _trainer(flags + ["--max-steps", "8"], comm)
    straight.fit()
    _, first = _trainer(flags + ["--max-steps", "4", "--checkpoint-dir", d, "--checkpoint-every", "4"], comm)
    first.fit()
    _, second = _trainer(flags + ["--max-steps", "8", "--checkpoint-dir", d], comm)
    loaded = second.load_checkpoint(d)
    st = second.optimizer.hook_state
    # the last step taken was step 3; per-bucket state (memory, generators, Q) waits for the bucket's first use
    restored = isinstance(st, HookState) and st.step == 3
    if st.error_feedback:
        restored = restored and set(st._pending) == {str(b.index) for b in second.optimizer.buckets}
    second.fit()
    same = np.array_equal(second.optimizer.params, straight.optimizer.params)
    all_ok(comm, loaded and restored, f"{name}: checkpoint found and compression state restored")
    all_ok(comm, same, f"{name}: resumed parameters differ from the uninterrupted run")
    assert_identical(comm, second.optimizer.params, f"{name} parameters")


@pytest.mark.parametrize("name", ["sign", "powersgd"])
def test_json_reports_wire_bytes_and_ratio(name):
    comm = _world()
    args, tr = _trainer(BASE + ["--compression", name, "--max-steps", "3"], comm)
    result = tr.fit()
    result.update(train_plugin.report(args, tr, result))
    st = tr.optimizer.hook_state
    p = comm.Get_size()
    per_step = result["wire_bytes_per_step"]
    expected = sum(st.expected_wire_bytes(b.index) for b in tr.optimizer.buckets)
    ok = len(per_step) == p and per_step[comm.Get_rank()] == expected
    ok = ok and result["compression_ratio"] > (20 if name == "sign" else 1.5)
    all_ok(comm, ok, f"{name}: per-step wire bytes {per_step} vs analytical {expected}")


def test_warmup_flag_sends_first_steps_uncompressed():
    comm = _world()
    args, tr = _trainer(BASE + ["--compression", "sign", "--compress-after-steps", "2", "--max-steps", "3"], comm)
    tr.fit()
    st = tr.optimizer.hook_state
    p, r = comm.Get_size(), comm.Get_rank()
    from ring_allreduce.compression.wire import ring_allreduce_bytes

    plain = sum(ring_allreduce_bytes(r, p, b.buffer.size, 4) for b in tr.optimizer.buckets)
    signed = sum((p - 1) * st._buckets[b.index].compressor.payload_nbytes(st._buckets[b.index].layout)
                 for b in tr.optimizer.buckets)
    all_ok(comm, st.stats["wire_bytes"] == 2 * plain + signed, "two plain steps then one compressed")


@pytest.mark.parametrize("argv, needle", [
    (["--compression-ratio", "0.1"], "need --compression"),
    (["--compression", "sign", "--compression-ratio", "0.1"], "does not apply"),
    (["--compression", "none", "--error-feedback"], "lossless"),
])
def test_bad_flag_combinations_fail_on_every_rank(argv, needle):
    comm = _world()
    from ring_allreduce.usage import UsageError

    try:
        _trainer(BASE + argv + ["--max-steps", "1"], comm)
        message = None
    except UsageError as e:  # raised on every rank; the CLI's guard prints it once on rank 0 and exits 2
        message = str(e)
    all_ok(comm, message is not None and needle in message, f"UsageError naming {needle!r}, got {message!r}")
