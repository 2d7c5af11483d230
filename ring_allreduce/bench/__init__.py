"""Benchmark suite: measure allreduce algorithms against native ``MPI_Allreduce`` (and optionally torch Gloo).

The measuring (:mod:`.sweep`) returns rows as data; printing, JSON/CSV (:mod:`.report`), plots (:mod:`.plot`), the
alpha-beta-gamma model (:mod:`.model`) and the ``auto`` table (:mod:`.tune`) are separate consumers of those rows.
Run it as ``mpiexec -n 2 ring-allreduce bench`` (see ``ring-allreduce bench --help``).
"""
