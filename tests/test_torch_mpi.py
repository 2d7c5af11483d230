"""ring_allreduce.torch under ``mpiexec -n N`` (N = 1..5): DistributedOptimizer training equals one process on the
same global batch, overlap, checkpoint/resume, mismatched models, backward_passes_per_step, compression, tensor
allreduce and broadcasts. Skipped with a reason without torch (``pip install 'ring-allreduce[torch]'``)."""
import copy
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs PyTorch (pip install 'ring-allreduce[torch]')")

import ring_allreduce.torch as rat  # noqa: E402
from ring_allreduce.errors import ArgumentError, MismatchError  # noqa: E402
from tests.mpi_util import all_ok, assert_identical  # noqa: E402

pytestmark = pytest.mark.mpi
torch.set_num_threads(1)
GLOBAL_BATCH = 60  # divisible by every p in 1..5


def _world():
    from mpi4py import MPI

    return MPI.COMM_WORLD


def mlp(hidden=16):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(12, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, hidden),
                               torch.nn.Tanh(), torch.nn.Linear(hidden, 3)).double()


def cnn():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                               torch.nn.Conv2d(4, 6, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(6 * 2 * 2, 3)).double()


def data(kind, step):
    g = torch.Generator().manual_seed(100 + step)
    shape = (GLOBAL_BATCH, 12) if kind == "mlp" else (GLOBAL_BATCH, 1, 8, 8)
    return torch.randn(shape, generator=g, dtype=torch.float64), torch.randint(0, 3, (GLOBAL_BATCH,), generator=g)


def local(x, comm):
    n = GLOBAL_BATCH // comm.Get_size()
    return x[comm.Get_rank() * n:(comm.Get_rank() + 1) * n]


def flat_params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()


def reference(kind, steps, lr=0.1):
    """One process, the whole global batch, plain SGD with momentum."""
    model = mlp() if kind == "mlp" else cnn()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for s in range(steps):
        x, y = data(kind, s)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return flat_params(model)


def distributed(kind, steps, comm, lr=0.1, **kw):
    model = mlp() if kind == "mlp" else cnn()
    opt = rat.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9),
                                   model.named_parameters(), comm=comm, **kw)
    run_steps(model, opt, comm, range(steps), kind)
    return model, opt


def run_steps(model, opt, comm, steps, kind="mlp"):
    """Train on this rank's share of the global batches of ``steps``."""
    for s in steps:
        x, y = data(kind, s)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(local(x, comm)), local(y, comm)).backward()
        opt.step()


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("algorithm", ["auto", "ring"])
def test_training_matches_one_process(kind, algorithm):
    comm = _world()
    model, opt = distributed(kind, 4, comm, algorithm=algorithm, bucket_mb=0.0005)
    got, want = flat_params(model), reference(kind, 4)
    assert_identical(comm, got, "parameters")
    all_ok(comm, np.allclose(got, want, rtol=1e-10, atol=1e-12), f"parameters vs one process: "
           f"max diff {np.max(np.abs(got - want)):.3g}")
    all_ok(comm, len(opt.core.buckets) > 1, "several buckets")
    opt.free()


def test_overlap_starts_buckets_during_backward():
    comm = _world()
    model = mlp(hidden=64)
    opt = rat.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model.named_parameters(),
                                   comm=comm, bucket_mb=0.001)
    x, y = data("mlp", 0)
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(local(x, comm)), local(y, comm)).backward()
    t_backward_end = __import__("time").perf_counter()
    opt.step()
    spans = opt.core.spans
    early = [b for b, t0, _, e in spans if e and t0 < t_backward_end]
    all_ok(comm, len(spans) >= 3 and len(early) >= 1,
           f"a bucket started before backward ended: spans {spans}, backward ended {t_backward_end}")
    # the first bucket (last layer) starts before the last one is even ready
    all_ok(comm, spans[0][1] < spans[-1][1], f"bucket 0 started first: {spans}")
    opt.free()


def test_checkpoint_resume_is_bitwise(tmp_path):
    comm = _world()
    straight, _ = distributed("mlp", 6, comm, bucket_mb=0.0005)
    model, opt = distributed("mlp", 3, comm, bucket_mb=0.0005)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    opt.free()
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    model2 = mlp()
    model2.load_state_dict(ck["model"])
    opt2 = rat.DistributedOptimizer(torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9),
                                    model2.named_parameters(), comm=comm, bucket_mb=0.0005)
    opt2.load_state_dict(ck["opt"])
    run_steps(model2, opt2, comm, range(3, 6))
    all_ok(comm, np.array_equal(flat_params(model2), flat_params(straight)), "resumed == straight, bitwise")
    opt2.free()


def test_mismatched_models_raise_the_same_error_everywhere():
    comm = _world()
    p, r = comm.Get_size(), comm.Get_rank()
    if p == 1:
        pytest.skip("a mismatch needs two ranks")
    model = mlp(hidden=17 if r == p - 1 else 16)
    try:
        rat.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model.named_parameters(), comm=comm)
        msg = None
    except MismatchError as e:
        msg = str(e)
    msgs = comm.allgather(msg)
    all_ok(comm, msg is not None and len(set(msgs)) == 1, f"same MismatchError on every rank: {msgs}")
    all_ok(comm, "4.weight" in msg and f"[{p - 1}]" in msg, f"names the parameter and rank: {msg}")


def test_mismatched_settings_raise_everywhere():
    comm = _world()
    if comm.Get_size() == 1:
        pytest.skip("a mismatch needs two ranks")
    model = mlp()
    with pytest.raises(MismatchError, match="algorithm"):
        rat.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), comm=comm,
                                 algorithm="ring" if comm.Get_rank() == 0 else "tree")
    with pytest.raises(MismatchError, match="backward_passes_per_step"):
        rat.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), comm=comm,
                                 backward_passes_per_step=1 + comm.Get_rank())
    with pytest.raises(ArgumentError, match=r"rank\(s\) \[0\].*backup workers"):  # one rank's bad argument
        rat.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), comm=comm,
                                 backup_workers=int(comm.Get_rank() == 0))


def test_backward_passes_per_step():
    comm = _world()
    model = mlp()
    opt = rat.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                                   model.named_parameters(), comm=comm, bucket_mb=0.0005,
                                   backward_passes_per_step=2)
    for s in range(3):
        x, y = data("mlp", s)
        xl, yl = local(x, comm), local(y, comm)
        h = len(yl) // 2  # two parts of the local batch whose losses add up to its mean
        opt.zero_grad()
        for part in (slice(0, h), slice(h, None)):
            (torch.nn.functional.cross_entropy(model(xl[part]), yl[part], reduction="sum") / len(yl)).backward()
        opt.step()
    got = flat_params(model)
    assert_identical(comm, got, "parameters")
    all_ok(comm, np.allclose(got, reference("mlp", 3), rtol=1e-10, atol=1e-12), "two passes == one process")
    with pytest.raises(ArgumentError, match="backward_passes_per_step"):
        rat.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), comm=comm, backward_passes_per_step=0)
    opt.free()


@pytest.mark.parametrize("name,tol", [("fp16", 2e-3), ("topk", None)])
def test_compression(name, tol):
    comm = _world()
    opts = {"ratio": 0.2} if name == "topk" else None
    model, opt = distributed("mlp", 4, comm, compression=name, compression_options=opts, bucket_mb=0.0005,
                             algorithm="ring")
    got = flat_params(model)
    assert_identical(comm, got, "parameters")
    if tol is not None:
        all_ok(comm, np.allclose(got, reference("mlp", 4), atol=tol), f"{name} close to uncompressed")
    else:  # a lossy compressor still moves the parameters from the start
        all_ok(comm, not np.array_equal(got, flat_params(mlp())), "topk training moved the parameters")
    all_ok(comm, opt.core.compression.summary()["steps"] == 4 or comm.Get_size() == 1, "compressed every step")


def test_zero_grad_between_backward_and_step_is_an_error():
    comm = _world()
    model = mlp()
    opt = rat.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), comm=comm)
    x, y = data("mlp", 0)
    torch.nn.functional.cross_entropy(model(local(x, comm)), local(y, comm)).backward()
    with pytest.raises(RuntimeError, match="zero_grad"):
        opt.zero_grad()
    with pytest.raises(ArgumentError, match="backup workers"):
        rat.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), comm=comm, backup_workers=1)
    opt.step()
    opt.free()


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.float64])
@pytest.mark.parametrize("n", [0, 1, 7, 1000])
def test_tensor_allreduce_equals_mpi(dtype, n):
    from mpi4py import MPI

    comm = _world()
    r = comm.Get_rank()
    t = (torch.arange(n, dtype=torch.int64) * (r + 1) - 3 * r).to(dtype)
    want = np.empty(n, t.numpy().dtype)
    comm.Allreduce(t.numpy(), want, MPI.SUM)
    got = rat.allreduce(t, comm, op="sum", algorithm="ring")
    all_ok(comm, isinstance(got, torch.Tensor) and np.array_equal(got.numpy(), want), "allreduce == MPI")
    want_max = np.empty(n, t.numpy().dtype)
    comm.Allreduce(t.numpy(), want_max, MPI.MAX)
    with rat.allreduce_init(t, comm, op="max") as plan:
        all_ok(comm, np.array_equal(plan().numpy(), want_max), "plan max")
    req = rat.iallreduce(t.clone(), comm, op="sum")
    all_ok(comm, np.array_equal(req.wait().numpy(), want), "iallreduce")
    u = t.clone()
    rat.allreduce(u, comm, out=u)
    all_ok(comm, np.array_equal(u.numpy(), want), "in place")


@pytest.mark.parametrize("bad", ["noncontiguous", "bfloat16", "notatensor"])
def test_bad_tensor_on_one_rank_raises_everywhere(bad):
    comm = _world()
    r, p = comm.Get_rank(), comm.Get_size()
    t = torch.ones(4, 6, dtype=torch.float32)
    if r == p - 1:
        t = {"noncontiguous": t.t(), "bfloat16": t.to(torch.bfloat16), "notatensor": [1.0]}[bad]
    for call in (lambda: rat.allreduce(t, comm), lambda: rat.allreduce_init(t, comm)):
        try:
            call()
            msg = None
        except ArgumentError as e:
            msg = str(e)
        msgs = comm.allgather(msg)
        all_ok(comm, msg is not None and len(set(msgs)) == 1 and f"[{p - 1}]" in msg, f"same error: {msgs}")


def test_broadcasts():
    comm = _world()
    r = comm.Get_rank()
    torch.manual_seed(r)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4)).double()
    model(torch.randn(8, 5, dtype=torch.float64))  # running stats differ per rank
    rat.broadcast_parameters(model.state_dict(), root=0)
    for name, t in model.state_dict().items():
        assert_identical(comm, t.numpy(), name)
    opt = torch.optim.Adam(model.parameters(), lr=0.01 * (r + 1))
    if r == 0:
        model(torch.randn(8, 5, dtype=torch.float64)).sum().backward()
        opt.step()
    rat.broadcast_optimizer_state(opt, root=0)
    sd = opt.state_dict()
    all_ok(comm, sd["param_groups"][0]["lr"] == 0.01 and len(sd["state"]) == 4, f"state from rank 0: {sd}")
    for k, st in sd["state"].items():
        assert_identical(comm, st["exp_avg"].numpy(), f"exp_avg {k}")
    other = copy.deepcopy(model)
    if comm.Get_size() > 1 and r == 1:
        other = torch.nn.Sequential(torch.nn.Linear(5, 3)).double()
    if comm.Get_size() > 1:
        with pytest.raises(MismatchError):
            rat.broadcast_parameters(other.state_dict(), root=0)


@pytest.mark.gpu
def test_cuda_tensors_reduce_on_the_device():
    """CUDA tensors through DLPack (CuPy) or __cuda_array_interface__ (Numba): same bytes as the CPU path."""
    from tests.gpu_util import gpu_unavailable_reason

    if not torch.cuda.is_available() or gpu_unavailable_reason():
        pytest.skip(gpu_unavailable_reason() or "torch sees no CUDA GPU (a CPU build of torch)")
    comm = _world()
    r = comm.Get_rank()
    cpu = torch.arange(1000, dtype=torch.float64) * (r + 1)
    dev = cpu.cuda() * 1  # written by a torch kernel on torch's stream just before the call
    got = rat.allreduce(dev, comm, op="sum", algorithm="ring")
    want = rat.allreduce(cpu, comm, op="sum", algorithm="ring")
    all_ok(comm, got.is_cuda and torch.equal(got.cpu(), want), "CUDA tensor allreduce == CPU")
    with rat.allreduce_init(dev, comm, op="sum", out=dev) as plan:
        plan()
    all_ok(comm, torch.equal(dev.cpu(), want), "CUDA plan in place")


def test_synchronize_clip_then_step_and_lr_scheduler():
    """Horovod's clipping pattern: synchronize(), clip the reduced gradients, step inside skip_synchronize()."""
    comm = _world()
    model = mlp()
    opt = rat.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model.named_parameters(), comm=comm,
                                   bucket_mb=0.0005)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    ref = mlp()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    ref_sched = torch.optim.lr_scheduler.StepLR(ref_opt, step_size=1, gamma=0.5)
    for s in range(2):
        x, y = data("mlp", s)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(local(x, comm)), local(y, comm)).backward()
        opt.synchronize()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
        with opt.skip_synchronize():
            opt.step()
        sched.step()
        ref_opt.zero_grad()
        torch.nn.functional.cross_entropy(ref(x), y).backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.05)
        ref_opt.step()
        ref_sched.step()
    got = flat_params(model)
    assert_identical(comm, got, "parameters")
    all_ok(comm, np.allclose(got, flat_params(ref), rtol=1e-10, atol=1e-12), "clipped run == one process")
    all_ok(comm, opt.param_groups[0]["lr"] == 0.025, f"scheduler drove the wrapped lr: {opt.param_groups[0]['lr']}")
    with pytest.raises(RuntimeError, match="synchronize"):
        with opt.skip_synchronize():
            opt.step()
    opt.free()


def test_resume_with_compression_restores_error_feedback(tmp_path_factory):
    comm = _world()
    kw = dict(compression="topk", compression_options={"ratio": 0.1}, bucket_mb=0.0005, algorithm="ring")
    straight, _ = distributed("mlp", 6, comm, **kw)
    model, opt = distributed("mlp", 3, comm, **kw)
    d = comm.bcast(str(tmp_path_factory.mktemp("ck")) if comm.Get_rank() == 0 else None, root=0)
    comp = opt.compression_state_dict()  # collective
    if comm.Get_rank() == 0:
        np.savez(f"{d}/comp.npz", **comp)
        torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, f"{d}/ck.pt")
    comm.Barrier()
    opt.free()
    ck = torch.load(f"{d}/ck.pt", weights_only=True)
    with np.load(f"{d}/comp.npz", allow_pickle=False) as z:
        comp = {k: z[k] for k in z.files}
    model2 = mlp()
    model2.load_state_dict(ck["model"])
    opt2 = rat.DistributedOptimizer(torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9),
                                    model2.named_parameters(), comm=comm, **kw)
    opt2.load_state_dict(ck["opt"])
    opt2.load_compression_state_dict(comp)
    run_steps(model2, opt2, comm, range(3, 6))
    all_ok(comm, np.array_equal(flat_params(model2), flat_params(straight)), "resumed == straight with top-k, bitwise")
    opt2.free()
