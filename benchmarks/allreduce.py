#!/usr/bin/env python3
"""Thin wrapper: the same as ``ring-allreduce bench`` (see ``--help``); run under mpiexec.

    mpiexec -n 2 python benchmarks/allreduce.py -b 4M -e 64M -n 20 -c --json benchmarks/results/p2.json
"""
import sys

from ring_allreduce import abort
from ring_allreduce.bench.cli import main

if __name__ == "__main__":
    abort.install()  # one failing rank aborts the job instead of leaving the others in a collective
    sys.exit(main(sys.argv[1:]))
