"""``ring-allreduce`` / ``python -m ring_allreduce``: subcommands are loaded only when named, so each stays cheap."""
from __future__ import annotations

import importlib
import sys

#: subcommand -> (module, one-line help); each module has ``main(argv) -> int``
SUBCOMMANDS = {
    "info": ("ring_allreduce.info", "print the MPI library, rank count, array backends and kernels"),
    "bench": ("ring_allreduce.bench.cli", "benchmark the allreduce algorithms against native MPI_Allreduce"),
    "train": ("ring_allreduce.train.cli", "data-parallel SGD on the hand-written allreduce"),
    "cluster": ("ring_allreduce.cluster.cli", "emulated hosts with shaped links on one machine (needs root)"),
}


def _usage() -> str:
    lines = ["usage: ring-allreduce {" + ",".join(SUBCOMMANDS) + "} [options]", "", "subcommands:"]
    lines += [f"  {name:8s} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["  --version  print the version and exit"]
    lines += ["", "Run under mpiexec, e.g.: mpiexec -n 2 ring-allreduce train"]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "-V", "--version"):
        from . import __version__, usage

        if usage.rank() == 0:  # under mpiexec: printed once
            print(f"ring-allreduce {__version__}" if argv and argv[0] in ("-V", "--version") else _usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"ring-allreduce: unknown subcommand {name!r}; valid: {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    from . import abort, usage

    abort.install()
    # a user error: one line on rank 0, exit 2 on every rank; Ctrl-C (even while importing): a short message
    return usage.guard(lambda args: importlib.import_module(SUBCOMMANDS[name][0]).main(args), rest)


if __name__ == "__main__":
    sys.exit(main())
