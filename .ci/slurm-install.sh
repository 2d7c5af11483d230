#!/bin/bash
# Install Debian's slurm-wlm and munge for the `slurm` test tier (tests/test_slurm.py). Idempotent; about 7 s.
# Skips with a message (exit 0) when they are already there, when not root, or without apt-get: the tests then
# skip with a reason instead of failing.
set -u
if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null; then
    echo "slurm-install: slurm-wlm and munge already installed ($(slurmctld -V 2>/dev/null))"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "slurm-install: not root; skipping (the slurm tests will skip)"
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "slurm-install: no apt-get; skipping (the slurm tests will skip)"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null; }; then
    echo "slurm-install: apt-get install slurm-wlm munge failed; the slurm tests will skip" >&2
    exit 0
fi
# the packages may start system daemons where an init system runs; the tests start their own on private ports
echo "slurm-install: installed $(slurmctld -V 2>/dev/null)"
