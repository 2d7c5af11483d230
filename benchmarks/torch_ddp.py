"""Samples/s of ``ring_allreduce.torch.DistributedOptimizer`` against torch DDP (Gloo) on the same model.

The model is the 2.1 M-parameter MLP 1024-1024-1024-10 (float32), the global batch 512 split across the ranks, one
torch thread per rank, SGD with momentum. Both run in the same job, interleaved: each round runs a few warm-up
steps and then ``--steps`` timed steps of one mode, then of the other (the order alternates between rounds), so a
change in the machine's load hits both alike. A step's time is the slowest rank's; the row reports the median
over rounds. Both modes must end with bitwise identical parameters on every rank (checked, reported).

Launchers (``--launcher``): ``mpiexec`` (default: ``mpiexec -n N`` on this machine) or ``cluster``
(``ring-allreduce cluster run --name NAME --ranks-per-host 1 -- CMD`` on an emulated cluster brought up with
``ring-allreduce cluster up``). The script launches its own job; ``--worker`` is the job's side.

Usage (from the repository root)::

    python benchmarks/torch_ddp.py --quick                       # smoke run (no figures to publish)
    python benchmarks/torch_ddp.py -n 2 --rounds 7 --json benchmarks/results/torch_ddp.json
    python benchmarks/torch_ddp.py --launcher cluster --name c1 --rounds 7
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("ring_allreduce", "ddp_gloo")


def build(widths, seed):
    import torch

    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


def wrap(mode, model, args, comm, powersgd_rank, lr=0.01):
    """(forward module, optimizer) of one mode: our DistributedOptimizer, or DDP over Gloo; PowerSGD of rank
    ``powersgd_rank`` on both when > 0 (plain for 2 steps, then compressed: DDP's hook's minimum)."""
    import torch

    import ring_allreduce.torch as rat
    from ring_allreduce.bench import gloo

    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    if mode == "ring_allreduce":
        psgd = {"compression": "powersgd",
                "compression_options": {"powersgd_rank": powersgd_rank, "compress_after_steps": 2}}
        opt = rat.DistributedOptimizer(opt, model.named_parameters(), comm=comm, bucket_mb=args.bucket_mb,
                                       algorithm=args.algorithm, **(psgd if powersgd_rank else {}))
        return model, opt
    gloo._init(comm)
    fwd = torch.nn.parallel.DistributedDataParallel(model, bucket_cap_mb=args.ddp_bucket_mb)
    if powersgd_rank:
        from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as ps

        fwd.register_comm_hook(ps.PowerSGDState(process_group=None, matrix_approximation_rank=powersgd_rank,
                                                start_powerSGD_iter=2, use_error_feedback=True, warm_start=True),
                               ps.powerSGD_hook)
    return fwd, opt


def to_accuracy(args) -> None:
    """Each mode (and its PowerSGD variant) trains from the same initial model on a learnable synthetic task
    until the test accuracy reaches ``--target-acc``; training time only (evaluation excluded), per round."""
    import torch
    from mpi4py import MPI

    from ring_allreduce.bench import gloo

    torch.set_num_threads(1)
    comm = MPI.COMM_WORLD
    rank, p = comm.Get_rank(), comm.Get_size()
    widths = [int(w) for w in args.widths.split("-")]
    B, n_train, n_test = args.global_batch, args.train_samples, 2048
    local = B // p
    # labels from a fixed random linear teacher: a task the MLP learns (about 0.8 at 400 steps, one process)
    x = torch.randn(n_train + n_test, widths[0], generator=torch.Generator().manual_seed(1))
    y = (x @ torch.randn(widths[0], widths[-1], generator=torch.Generator().manual_seed(2))).argmax(1)
    xte, yte = x[n_train:][rank::p], y[n_train:][rank::p]
    reason = gloo.unavailable_reason(comm)
    modes = [(m, r) for m in MODES if m != "ddp_gloo" or reason is None
             for r in ([0, args.powersgd_rank] if args.powersgd_rank else [0])]
    runs = {m: [] for m in modes}
    for rnd in range(args.rounds):
        for mode, prank in (modes if rnd % 2 == 0 else modes[::-1]):
            model = build(widths, args.seed)
            fwd, opt = wrap(mode, model, args, comm, prank, lr=args.lr)
            spent, hit, acc = 0.0, None, 0.0
            for step in range(1, args.max_steps + 1):
                i = (step - 1) * B % n_train + rank * local
                comm.Barrier()
                t0 = time.perf_counter()
                opt.zero_grad()
                torch.nn.functional.cross_entropy(fwd(x[i:i + local]), y[i:i + local]).backward()
                opt.step()
                spent += comm.allreduce(time.perf_counter() - t0, MPI.MAX)
                if step % args.eval_every == 0:
                    with torch.no_grad():
                        right = int((model(xte).argmax(1) == yte).sum())
                    acc = comm.allreduce(right) / n_test
                    if acc >= args.target_acc:
                        hit = step
                        break
            runs[(mode, prank)].append({"seconds": spent if hit else None, "steps": hit, "accuracy": acc,
                                        "seconds_per_step": spent / step})
            if rank == 0:
                print(f"  round {rnd + 1}: {label(mode, prank)}: "
                      + (f"{acc:.3f} after {hit} steps in {spent:.1f} s" if hit else
                         f"not reached in {args.max_steps} steps (accuracy {acc:.3f})"), flush=True)
    if rank == 0:
        rows = []
        for (mode, prank), rs in runs.items():
            done = [r["seconds"] for r in rs if r["seconds"] is not None]
            rows.append({"mode": label(mode, prank), "runs": rs, "reached": f"{len(done)}/{len(rs)}",
                         "median_seconds": statistics.median(done) if done else None,
                         "median_steps": statistics.median(r["steps"] for r in rs if r["steps"]) if done else None,
                         "median_step_s": statistics.median(r["seconds_per_step"] for r in rs)})
        print(f"\ntime to {args.target_acc:.0%} test accuracy (p={p}, global batch {B}, lr {args.lr}, "
              f"median of {args.rounds}):")
        print("| mode | reached | median steps | median s | s/step |\n|---|---|---|---|---|")
        for r in rows:
            secs = f"{r['median_seconds']:.1f}" if r["median_seconds"] else "-"
            print(f"| {r['mode']} | {r['reached']} | {r['median_steps'] or '-'} | {secs} | "
                  f"{r['median_step_s'] * 1e3:.1f} ms |")
        if reason:
            print(f"ddp_gloo skipped: {reason}")
        if args.json:
            from ring_allreduce._io import write_json

            write_json(args.json, {"args": vars(args), "rows": rows, "ddp_skipped": reason})


def label(mode, prank) -> str:
    return mode + (f" + PowerSGD rank {prank}" if prank else "")


def worker(args) -> None:
    import torch
    from mpi4py import MPI

    from ring_allreduce.bench import gloo

    torch.set_num_threads(1)
    comm = MPI.COMM_WORLD
    rank, p = comm.Get_rank(), comm.Get_size()
    widths = [int(w) for w in args.widths.split("-")]
    local = args.global_batch // p
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.global_batch, widths[0], generator=g)[rank * local:(rank + 1) * local]
    y = torch.randint(0, widths[-1], (args.global_batch,), generator=g)[rank * local:(rank + 1) * local]
    reason = gloo.unavailable_reason(comm)
    modes = [m for m in MODES if m != "ddp_gloo" or reason is None]
    runners = {}
    for mode in modes:
        model = build(widths, args.seed)
        fwd, opt = wrap(mode, model, args, comm, args.powersgd_rank)

        def step(fwd=fwd, opt=opt):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(fwd(x), y).backward()
            opt.step()
        runners[mode] = (step, model)
    times = {m: [] for m in modes}
    for r in range(args.rounds):
        for mode in (modes if r % 2 == 0 else modes[::-1]):
            step = runners[mode][0]
            for _ in range(args.warmup):
                step()
            comm.Barrier()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            dt = comm.allreduce(time.perf_counter() - t0, MPI.MAX)
            times[mode].append(dt / args.steps)
    rows = []
    for mode in modes:
        flat = torch.cat([q.detach().reshape(-1) for q in runners[mode][1].parameters()]).numpy()
        same = len(set(comm.allgather(flat.tobytes()))) == 1
        med = statistics.median(times[mode])
        rows.append({"mode": mode, "p": p, "global_batch": local * p, "params": int(flat.size),
                     "median_step_s": med, "samples_per_s": local * p / med, "step_s": times[mode],
                     "params_identical_on_all_ranks": same})
    if rank == 0:
        base = {r["mode"]: r["samples_per_s"] for r in rows}
        for r in rows:
            ratio = r["samples_per_s"] / base["ddp_gloo"] if "ddp_gloo" in base else None
            r["vs_ddp_gloo"] = ratio
            print(f"{r['mode']:>15}: {r['samples_per_s']:9.1f} samples/s (median step {r['median_step_s'] * 1e3:.1f} ms"
                  f" over {args.rounds} rounds; p={p}, {r['params']:,} params)"
                  + (f", {ratio:.2f}x DDP" if ratio else "") + f"; params identical: {r['params_identical_on_all_ranks']}",
                  flush=True)
        if reason:
            print(f"ddp_gloo skipped: {reason}")
        if args.json:
            from ring_allreduce._io import write_json

            write_json(args.json, {"args": vars(args), "rows": rows, "ddp_skipped": reason})
    if not all(r["params_identical_on_all_ranks"] for r in rows):
        sys.exit("torch_ddp: parameters differ across ranks")


def launch(args, argv) -> int:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", *argv]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if args.launcher == "cluster":
        full = [sys.executable, "-m", "ring_allreduce", "cluster", "run", "--name", args.name,
                "--ranks-per-host", "1", "--"] + cmd
    else:
        sys.path.insert(0, ROOT)
        from tests.run import mpiexec_prefix

        full = mpiexec_prefix(args.n) + cmd
        if args.n > (os.cpu_count() or 1):
            env["MPIR_CVAR_ENABLE_HEAVY_YIELD"] = "1"
    return subprocess.run(full, env=env, timeout=args.timeout).returncode


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=2, help="ranks (mpiexec launcher)")
    ap.add_argument("--launcher", choices=("mpiexec", "cluster"), default="mpiexec")
    ap.add_argument("--name", default="torchddp", help="emulated cluster name (cluster launcher)")
    ap.add_argument("--widths", default="1024-1024-1024-10")
    ap.add_argument("--global-batch", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round and mode")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--bucket-mb", type=float, default=1.0, help="ring_allreduce bucket size")
    ap.add_argument("--ddp-bucket-mb", type=float, default=25.0, help="DDP bucket_cap_mb (its default)")
    ap.add_argument("--algorithm", default="auto")
    ap.add_argument("--powersgd-rank", type=int, default=0,
                    help="compress both with PowerSGD of this rank (ours: compression='powersgd'; DDP: its hook)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target-acc", type=float, default=None,
                    help="time to this test accuracy instead of samples/s (a learnable synthetic task)")
    ap.add_argument("--max-steps", type=int, default=600, help="--target-acc: give up after this many steps")
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--lr", type=float, default=0.05, help="--target-acc: SGD learning rate (momentum 0.9)")
    ap.add_argument("--train-samples", type=int, default=32768)
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true", help="2 rounds of 3 steps: a smoke run")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.warmup = 2, 3, 1
    if args.worker:
        to_accuracy(args) if args.target_acc else worker(args)
        return 0
    return launch(args, [a for a in argv if a != "--worker"])


if __name__ == "__main__":
    sys.exit(main())
