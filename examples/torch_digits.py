"""Train a small CNN on scikit-learn's 8x8 digits with ring_allreduce.torch.DistributedOptimizer.

    mpiexec -n 2 python examples/torch_digits.py --epochs 4

Each rank takes its share of every global batch; the optimizer averages the gradients across ranks (buckets
reduced while backward runs), so every rank holds the same model, and the run matches one process on the same
global batch. Rank 0 prints the loss per epoch and the test accuracy at the end.
"""
import argparse

import numpy as np
import torch
from mpi4py import MPI
from sklearn.datasets import load_digits

import ring_allreduce.torch as rat


def model():
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),   # 16 x 4 x 4
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),  # 32 x 2 x 2
        torch.nn.Flatten(), torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64, help="global batch (split across ranks)")
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--compression", default=None, help="e.g. fp16, topk, powersgd (default: none)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    comm = MPI.COMM_WORLD
    rank, p = comm.Get_rank(), comm.Get_size()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed + rank)  # different on purpose: broadcast_parameters makes them equal

    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(y)
    order = np.random.default_rng(args.seed).permutation(len(y))  # the same split on every rank
    test, train = order[:360], order[360:]

    net = model()
    opt = rat.DistributedOptimizer(torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9),
                                   net.named_parameters(), compression=args.compression)
    rat.broadcast_parameters(net.state_dict(), root=0)
    rat.broadcast_optimizer_state(opt, root=0)

    B = args.batch_size - args.batch_size % p  # divisible by p: every rank's share is the same size
    rng = np.random.default_rng(args.seed + 1)  # the same batch order on every rank
    for epoch in range(args.epochs):
        perm = train[rng.permutation(len(train))]
        total, seen = 0.0, 0
        for start in range(0, len(perm) - B + 1, B):
            idx = perm[start:start + B][rank::p]  # this rank's share of the global batch
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(X[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        mean = comm.allreduce(total) / comm.allreduce(seen)
        if rank == 0:
            print(f"epoch {epoch + 1}/{args.epochs}: train loss {mean:.4f}", flush=True)
    with torch.no_grad():
        acc = float((net(X[test]).argmax(1) == y[test]).float().mean())
    if rank == 0:
        print(f"test accuracy {acc:.3f} ({p} rank(s), global batch {B})", flush=True)
    opt.free()


if __name__ == "__main__":
    main()
