"""The compressor registry: name -> compressor class (``compress(x) -> (payload, ctx)``, ``decompress``)."""
from __future__ import annotations

from .._registry import Registry
from .powersgd import PowerSGD
from .quantizers import FP16, QSGD, Int8, NoCompression
from .sign import Sign
from .sparsifiers import RandomK, TopK

registry = Registry("compressor")
for _cls in (NoCompression, FP16, Int8, QSGD, RandomK, TopK, Sign, PowerSGD):
    registry.register(_cls.name, _cls)

#: user-facing option -> (constructor keyword, compressors that take it)
OPTIONS = {
    "compression_ratio": ("ratio", ("topk", "randomk")),
    "powersgd_rank": ("rank", ("powersgd",)),
    "qsgd_levels": ("levels", ("qsgd",)),
    "qsgd_chunk": ("chunk", ("qsgd",)),
    "min_compression_rate": ("min_compression_rate", ("powersgd",)),
    "warm_start": ("warm_start", ("powersgd",)),
    "orthogonalization": ("orthogonalization", ("powersgd",)),
}


def make(name: str, *, kernels: str = "numpy", seed=0, comm_rank: int = 0, **options):
    """Build compressor ``name``; ``options`` are the keys of :data:`OPTIONS` (a None value means the default).

    An option given for a compressor that does not use it is rejected, naming the compressors that do.
    """
    cls = registry.get(name)
    kw = {}
    for opt, value in options.items():
        if opt not in OPTIONS:
            raise ValueError(f"unknown compression option {opt!r}; valid: {', '.join(OPTIONS)}")
        if value is None:
            continue
        key, users = OPTIONS[opt]
        if name not in users:
            raise ValueError(f"{opt}={value!r} (--{opt.replace('_', '-')}) does not apply to compressor {name!r} "
                             f"(only to {', '.join(users)})")
        kw[key] = value
    return cls(kernels=kernels, seed=seed, comm_rank=comm_rank, **kw)
