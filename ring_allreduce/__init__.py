"""ring_allreduce: readable, measurable AllReduce over mpi4py, and data-parallel SGD on top.

``from ring_allreduce import allreduce`` is the main entry point (``allreduce_init`` for persistent plans,
``iallreduce`` for one nonblocking call); importing the package does not initialise
MPI, compile kernels or touch a GPU.
"""
from . import abort  # noqa: F401 - ``ring_allreduce.abort.install()`` (stdlib imports only)
from .algorithms import get as get_algorithm
from .algorithms import names as algorithm_names
from .algorithms import register as register_algorithm
from .api import allreduce, allreduce_init, iallreduce
from .errors import ArgumentError, MismatchError
from .shm import SharedAllocator, shared_empty, shared_zeros

__version__ = "0.1.0"

__all__ = [
    "allreduce",
    "allreduce_init",
    "iallreduce",
    "ArgumentError",
    "MismatchError",
    "register_algorithm",
    "get_algorithm",
    "algorithm_names",
    "shared_empty",
    "shared_zeros",
    "SharedAllocator",
    "__version__",
]
