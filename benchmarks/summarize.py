#!/usr/bin/env python3
"""Print Markdown tables (with ratios to native MPI) from ``ring-allreduce bench --json`` files.

    python benchmarks/summarize.py benchmarks/results/*.json
"""
import sys

from ring_allreduce.bench.summary import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
