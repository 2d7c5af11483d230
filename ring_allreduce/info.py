"""``ring-allreduce info``: what MPI, array backends and kernels this installation has, and why one is missing."""
from __future__ import annotations

import importlib
import json
import os

from .usage import ArgumentParser


def _probe(module: str, check=None):
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - any import failure is a reason to report
        return False, f"not importable ({type(e).__name__}: {e})"
    if check is None:
        return True, getattr(mod, "__version__", "available")
    return check(mod)


def _cupy_check(cupy):
    try:
        if cupy.cuda.is_available():
            return True, f"{cupy.__version__}, {cupy.cuda.runtime.getDeviceCount()} GPU(s)"
        return False, f"{cupy.__version__} installed but no CUDA GPU is visible"
    except Exception as e:  # noqa: BLE001
        return False, f"{cupy.__version__} installed but CUDA failed: {e}"


def _numba_cuda_check(numba):
    from numba import cuda

    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return True, f"{numba.__version__} (CUDA simulator, NUMBA_ENABLE_CUDASIM=1)"
    try:
        if cuda.is_available():
            return True, f"{numba.__version__}, GPU {cuda.get_current_device().name}"
        return False, f"numba {numba.__version__} installed but no CUDA GPU/driver is visible"
    except Exception as e:  # noqa: BLE001
        return False, f"numba {numba.__version__}: {e}"


AUTO_TABLE_ENV = "RING_ALLREDUCE_AUTO_TABLE"


def auto_table_source() -> tuple:
    """``(path, why)``: the file ``algorithm="auto"`` reads, and whether it comes from the environment or the package."""
    env = os.environ.get(AUTO_TABLE_ENV)
    if env:
        return os.path.abspath(env), f"from ${AUTO_TABLE_ENV}"
    from importlib import resources

    return str(resources.files("ring_allreduce").joinpath("data/auto_table.json")), "shipped with the package"


def collect(comm) -> dict:
    """Return the report as a dict (rank 0 prints it)."""
    from mpi4py import MPI

    from . import __version__, algorithm_names, backends
    from . import kernels

    thread = {MPI.THREAD_SINGLE: "single", MPI.THREAD_FUNNELED: "funneled",
              MPI.THREAD_SERIALIZED: "serialized", MPI.THREAD_MULTIPLE: "multiple"}.get(MPI.Query_thread())
    hosts = comm.allgather(MPI.Get_processor_name())
    report = {
        "ring_allreduce": __version__,
        "mpi_library": MPI.Get_library_version().strip().splitlines()[0],
        "mpi_standard": "%d.%d" % MPI.Get_version(),
        "mpi4py": importlib.import_module("mpi4py").__version__,
        "thread_level": thread,
        "ranks": comm.Get_size(),
        "hosts": sorted(set(hosts)),
        "cuda_aware_mpi": backends.cuda_aware_mpi(),
        "algorithms": algorithm_names() + ["auto"],
        "auto_table": "%s (%s)" % auto_table_source(),
        "backends": {},
        "kernels": {},
    }
    probes = {
        "numpy": ("numpy", None),
        "numba (CPU)": ("numba", None),
        "numba CUDA": ("numba", _numba_cuda_check),
        "cupy": ("cupy", _cupy_check),
    }
    for label, (mod, chk) in probes.items():
        ok, why = _probe(mod, chk)
        report["backends"][label] = {"available": ok, "detail": why}
    for name in kernels.names():
        try:
            k = kernels.get(name)
            report["kernels"][name] = {"available": True, "backend": k.backend,
                                       "default": kernels.DEFAULTS.get(k.backend) == name}
            if getattr(k, "threads", None) is not None:  # Numba CPU: threads per rank (cpus // ranks on the node)
                report["kernels"][name]["threads"] = k.threads
        except Exception as e:  # noqa: BLE001
            report["kernels"][name] = {"available": False, "why": f"{type(e).__name__}: {e}"}
    return report


def main(argv=None) -> int:
    ap = ArgumentParser(prog="ring-allreduce info", description=__doc__)
    ap.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = ap.parse_args(argv)
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    report = collect(comm)
    if comm.Get_rank() != 0:
        return 0
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for key in ("ring_allreduce", "mpi_library", "mpi_standard", "mpi4py", "thread_level", "ranks", "hosts",
                "cuda_aware_mpi", "algorithms", "auto_table"):
        print(f"{key:16s} {report[key]}")
    print("array backends:")
    for label, b in report["backends"].items():
        print(f"  {label:14s} {'yes' if b['available'] else 'no ':3s}  {b['detail']}")
    print("kernels:")
    for name, k in report["kernels"].items():
        if not k["available"]:
            print(f"  {name:14s} no: {k['why']}")
            continue
        extra = (", default" if k["default"] else "") + (f", {k['threads']} thread(s)" if "threads" in k else "")
        print(f"  {name:14s} yes, {k['backend']} arrays{extra}")
    return 0
