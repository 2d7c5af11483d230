"""Registries: register/get, errors listing valid names; the algorithm and kernel families."""
import pytest

import ring_allreduce
from ring_allreduce import algorithms, kernels
from ring_allreduce._registry import Registry, UnknownNameError


def test_register_get_and_unknown_name_lists_valid_ones():
    reg = Registry("widget")
    reg.register("a", 1)

    @reg.register("b")
    def b():
        return 2

    assert reg.get("a") == 1 and reg.get("b") is b and reg.names() == ["a", "b"]
    with pytest.raises(UnknownNameError, match=r"unknown widget 'c'; valid names: a, b"):
        reg.get("c")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", 3)
    reg.register("a", 3, overwrite=True)
    assert reg.get("a") == 3


def test_algorithm_registry_has_the_documented_algorithms():
    assert {"ring", "tree", "recursive_doubling", "rabenseifner", "mpi"} <= set(ring_allreduce.algorithm_names())
    with pytest.raises(ValueError, match="valid names: .*ring"):
        algorithms.get("rnig")
    with pytest.raises(ValueError, match="reserved"):
        algorithms.register("auto", lambda *a: None)


def test_kernel_registry_default_numpy_kernel():
    k = kernels.for_backend("numpy")
    assert k.backend == "numpy"
    with pytest.raises(ValueError, match="valid names"):
        kernels.get("no-such-kernel")


def test_import_is_light():
    """Importing the package must not initialise MPI, import Numba/CuPy or compile anything."""
    import subprocess
    import sys

    code = ("import sys, ring_allreduce; "
            "bad = [m for m in ('mpi4py.MPI', 'numba', 'cupy') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_build_calls_the_factory_once_and_reregistering_rebuilds():
    calls = []
    reg = Registry("gadget")
    reg.register("g", lambda: calls.append(1) or object())
    first = reg.build("g")
    assert reg.build("g") is first and reg.built("g") is first and len(calls) == 1
    reg.register("g", lambda: "new", overwrite=True)
    assert reg.built("g") is None and reg.build("g") == "new"
    with pytest.raises(UnknownNameError, match="valid names: g"):
        reg.build("h")
