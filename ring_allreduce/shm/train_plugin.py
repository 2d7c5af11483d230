"""``ring-allreduce train`` plugin: ``--shared-buckets`` puts the gradient buckets in the node's shared memory.

The flat gradient storage comes from :class:`~ring_allreduce.shm.SharedAllocator`, so every bucket is resident
and ``algorithm auto`` becomes ``shm`` (which runs ``hierarchical`` when the communicator spans several nodes).
The hand-written nonblocking ring cannot use shared memory, so ``--overlap nonblocking`` (the default) becomes
``thread`` (the blocking algorithm on the exchange thread); ``--overlap none`` is kept. The windows are freed
after the run. The JSON result gains ``shared_buckets``.
"""
from __future__ import annotations

import sys

ORDER = 90  # late: the allocator is freed in ``report``, after other plugins have looked at the buckets

_allocators = []


def add_arguments(ap) -> None:
    g = ap.add_argument_group("shared memory")
    g.add_argument("--shared-buckets", action="store_true",
                   help="allocate gradient buckets in the node's MPI shared-memory window and reduce them there "
                        "(algorithm shm; --overlap nonblocking becomes thread)")


def before_build(args, setup) -> None:
    if not getattr(args, "shared_buckets", False):
        return
    from . import SharedAllocator

    if setup.alloc is not None:
        print("ring-allreduce train: error: --shared-buckets conflicts with another gradient allocator",
              file=sys.stderr, flush=True)
        raise SystemExit(2)
    alloc = SharedAllocator(setup.comm)
    _allocators.append(alloc)
    setup.alloc = alloc
    if args.algorithm == "auto":
        args.algorithm = "shm"
    if args.overlap == "nonblocking":
        args.overlap = "thread"


def report(args, trainer, result) -> dict:
    if not getattr(args, "shared_buckets", False):
        return {}
    while _allocators:
        _allocators.pop().close()
    return {"shared_buckets": True, "shared_buckets_algorithm": args.algorithm, "shared_buckets_overlap": args.overlap}
