"""Broadcast a model's parameters and an optimizer's state from one rank (collective), as Horovod does at start.

The names, shapes and dtypes are agreed first (one small ``allgather``), so mismatched models raise the same
:class:`~ring_allreduce.MismatchError` on every rank instead of broadcasting into the wrong buffers; then each
tensor travels with one ``MPI.Bcast`` of its bytes (CPU tensors in place, others through a host copy).
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import ArgumentError
from ..optim.layout import Layout, agree


def _comm(comm):
    if comm is None:
        from mpi4py import MPI

        return MPI.COMM_WORLD
    return comm


def _bcast_tensor(comm, t: torch.Tensor, root: int) -> None:
    if t.device.type == "cpu" and t.is_contiguous():
        comm.Bcast(t.detach().view(-1).view(torch.uint8).numpy(), root=root)
        return
    host = t.detach().to("cpu").contiguous()
    comm.Bcast(host.view(-1).view(torch.uint8).numpy(), root=root)
    with torch.no_grad():
        t.copy_(host)


def broadcast_parameters(params, root: int = 0, comm=None) -> None:
    """Overwrite every rank's tensors with ``root``'s, in place (collective).

    ``params``: a ``state_dict()``, ``named_parameters()`` or a list of ``(name, tensor)``.
    """
    comm = _comm(comm)
    items = list(params.items()) if hasattr(params, "items") else list(params)
    problems = []
    if not isinstance(root, int) or not 0 <= root < comm.Get_size():
        problems.append(f"root must be a rank in [0, {comm.Get_size()}), got {root!r}")
    specs = []
    for name, t in items:
        if not isinstance(t, torch.Tensor):
            problems.append(f"{name!r} is a {type(t).__name__}, not a tensor")
            continue
        try:  # the dtype's NumPy twin names it in the agreement (bfloat16 and friends: by item size)
            dt = torch.empty((), dtype=t.dtype).numpy().dtype
        except TypeError:
            dt = np.dtype(f"V{t.element_size()}")
        specs.append((name, tuple(t.shape), dt))
    agree(comm, Layout(specs, 0), {"call": "broadcast_parameters", "root": root}, problems)
    for _, t in items:
        _bcast_tensor(comm, t, root)


def broadcast_optimizer_state(optimizer, root: int = 0, comm=None) -> None:
    """Give every rank ``root``'s optimizer state (hyperparameters, momentum buffers, step counts) (collective).

    The state's structure goes by pickle from ``root`` (small), its tensors by ``MPI.Bcast``; the parameter groups
    must have the same sizes on every rank (agreed first).
    """
    comm = _comm(comm)
    inner = getattr(optimizer, "optimizer", optimizer)
    sizes = [len(g["params"]) for g in inner.param_groups]
    everyone = comm.allgather(sizes)
    if any(s != everyone[0] for s in everyone):
        raise ArgumentError(f"optimizer parameter groups differ across ranks: {everyone}")
    rank = comm.Get_rank()
    tensors = []

    def strip(obj):  # tensors -> placeholders (shape, dtype, index); the rest as is
        if isinstance(obj, torch.Tensor):
            tensors.append(obj)
            return ("__tensor__", tuple(obj.shape), str(obj.dtype), len(tensors) - 1)
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(strip(v) for v in obj)
        return obj

    skeleton = strip(inner.state_dict()) if rank == root else None
    skeleton = comm.bcast(skeleton, root=root)
    if rank != root:
        tensors = []

        def build(obj):
            if isinstance(obj, tuple) and len(obj) == 4 and obj[0] == "__tensor__":
                t = torch.empty(obj[1], dtype=getattr(torch, obj[2].replace("torch.", "")))
                tensors.append(t)
                return t
            if isinstance(obj, dict):
                return {k: build(v) for k, v in obj.items()}
            if isinstance(obj, (list, tuple)):
                return type(obj)(build(v) for v in obj)
            return obj

        state = build(skeleton)
    for t in tensors:
        _bcast_tensor(comm, t, root)
    if rank != root:
        inner.load_state_dict(state)
