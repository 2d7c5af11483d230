"""Optional comparison row: ``torch.distributed`` with the Gloo backend, the peer users would otherwise pick.

Used only when torch is importable (``pip install torch``, CPU wheel); otherwise the sweep records why the row was
skipped. The process group is set up once over TCP: rank 0 picks a free port and sends it over ``comm``.
"""
from __future__ import annotations

import os
import socket
from typing import Callable, Optional

import numpy as np

_group = {}


def _local_reason() -> Optional[str]:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return "torch not installed (pip install torch for the Gloo comparison row)"
    try:
        import torch.distributed as dist
    except Exception as e:  # a broken torch install must not stop the benchmark
        return f"torch.distributed not importable: {type(e).__name__}: {e}"
    if not dist.is_available() or not dist.is_gloo_available():
        return "this torch build has no Gloo backend"
    return None


def unavailable_reason(comm) -> Optional[str]:
    """Why Gloo cannot run on every rank of ``comm`` (the same answer on every rank), or None."""
    reasons = comm.allgather(_local_reason())
    bad = [(r, msg) for r, msg in enumerate(reasons) if msg]
    if not bad:
        return None
    return bad[0][1] if len(bad) == len(reasons) else f"rank {bad[0][0]}: {bad[0][1]}"


def _interface_address(name: str) -> str:
    """The IPv4 address of network interface ``name`` (Linux ``SIOCGIFADDR``)."""
    import fcntl
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        raw = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
    return socket.inet_ntoa(raw[20:24])


def host_address() -> str:
    """An address of this host the other hosts can reach: its hostname's, or else (a hostname no resolver knows,
    as on the emulated cluster) the address of ``$GLOO_SOCKET_IFNAME`` or of the first interface that has one."""
    name = socket.gethostname()
    try:
        addr = socket.gethostbyname(name)
        if not addr.startswith("127."):
            return addr
    except OSError:
        pass
    want = os.environ.get("GLOO_SOCKET_IFNAME")
    names = [want] if want else [n for _, n in socket.if_nameindex() if n != "lo"]
    for n in names:
        try:
            return _interface_address(n)
        except OSError:
            continue
    return name


def _init(comm) -> None:
    import datetime

    import torch.distributed as dist

    if dist.is_initialized():
        if dist.get_world_size() != comm.Get_size() or dist.get_rank() != comm.Get_rank():
            raise RuntimeError("a torch process group with different ranks is already initialised")
        return
    addr = port = None
    if comm.Get_rank() == 0:
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        addr = host_address()
    hosts = comm.allgather(socket.gethostname())
    addr, port = comm.bcast((addr, port), root=0)
    if len(set(hosts)) == 1:
        addr = "127.0.0.1"  # one node: loopback avoids name resolution surprises
    dist.init_process_group("gloo", init_method=f"tcp://{addr}:{port}", rank=comm.Get_rank(),
                            world_size=comm.Get_size(), timeout=datetime.timedelta(seconds=120))
    _group["ok"] = True


def make_call(comm, x: np.ndarray, out: np.ndarray, op: str) -> Callable[[], object]:
    """A no-argument callable doing ``dist.all_reduce`` of ``x`` into ``out`` (copy first when out-of-place)."""
    import torch
    import torch.distributed as dist

    _init(comm)
    rop = {"sum": dist.ReduceOp.SUM, "avg": dist.ReduceOp.SUM, "prod": dist.ReduceOp.PRODUCT,
           "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op]
    t_out = torch.from_numpy(out.reshape(-1))
    all_reduce, p = dist.all_reduce, comm.Get_size()
    copy = None if out is x else (lambda: np.copyto(out, x))
    post = None
    if op == "avg":  # Gloo has no AVG: divide afterwards (integers floor-divide, as the package does)
        post = (lambda: t_out.div_(p)) if out.dtype.kind == "f" else (lambda: t_out.floor_divide_(p))

    def call():
        if copy is not None:
            copy()
        all_reduce(t_out, rop)
        if post is not None:
            post()
    return call
