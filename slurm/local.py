#!/usr/bin/env python3
"""Try ``slurm/*.sbatch`` without a cluster: start a private one-node Slurm on localhost, submit, wait, report.

    sudo .ci/slurm-install.sh                     # once: Debian's slurm-wlm and munge
    python slurm/local.py slurm/train.sbatch      # as root, from the clone, with your virtualenv active
    RA_EPOCHS=3 python slurm/local.py slurm/bench.sbatch --ntasks=2

It is the cluster the ``slurm`` test tier uses (``tests/test_slurm.py``: munged, slurmctld and slurmd in the
foreground from a generated ``slurm.conf`` in a temporary folder, on free ports). The job gets ``RA_VENV`` (the
active virtualenv) and ``RA_RESULTS_DIR`` (``./results`` unless set); its output file and results folder are
printed at the end, and every daemon started here is stopped, also on Ctrl-C. Extra arguments go to ``sbatch``.
Without Slurm, or not as root, it says what is missing in one line and exits 2.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv) -> int:
    if not argv or argv[0] in ("-h", "--help") or not argv[0].endswith(".sbatch"):
        print(__doc__.strip())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    script, sbatch_args = os.path.abspath(argv[0]), argv[1:]
    if not os.path.isfile(script):
        sys.stderr.write(f"slurm/local.py: error: no such batch script: {argv[0]}\n")
        return 2
    sys.path.insert(0, ROOT)
    from tests.test_slurm import Cluster, _skip_reason

    reason = _skip_reason()
    if reason:
        sys.stderr.write(f"slurm/local.py: error: cannot start the local Slurm: {reason}\n")
        return 2
    env = {"RA_RESULTS_DIR": os.path.abspath(os.environ.get("RA_RESULTS_DIR", "results"))}
    if sys.prefix != sys.base_prefix:
        env["RA_VENV"] = os.environ.get("RA_VENV", sys.prefix)
    folder = tempfile.mkdtemp(prefix="ra-slurm-")  # short: the munge socket path must fit in 108 bytes
    cluster = Cluster(folder)
    try:
        print(f"starting munged, slurmctld and slurmd in {folder} ...", flush=True)
        cluster.start()
        job = cluster.submit(script, env, sbatch_args, cwd=os.getcwd())
        print(f"submitted {argv[0]} as job {job}; waiting ...", flush=True)
        state = cluster.wait_job(job, timeout=3600)
        outs = [n for n in os.listdir(os.getcwd()) if n.endswith(f"-{job}.out")]
        for name in outs:
            print(f"--- {name}")
            with open(name, errors="replace") as fh:
                print(fh.read()[-4000:])
        print(f"job {job}: {state}; results under {env['RA_RESULTS_DIR']}")
        return 0 if state == "COMPLETED" else 1
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
