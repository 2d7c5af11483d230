#!/bin/bash
# Re-run every measurement quoted in the README: the auto table (p=2,3,4), the p=2 targets (busbw 4-64 MiB in-place
# and out-of-place, small-message latency with the agreement check's cost), a checked full sweep with the
# alpha-beta-gamma fit, and p=3/4 reports. Each configuration runs RA_REPEATS times (default 3; the merged files
# hold the median per algorithm and size), every run interleaves the algorithms in rounds, and waits (up to
# RA_WAIT_S s, default 60) for the 1-minute load average to fall below RA_MAX_LOAD (default 1.0): other work on the
# node distorts timings, and the load each run started under is kept in its JSON ("load_avg").
#   bash benchmarks/run_readme.sh            # from the repository root, with ring-allreduce installed
set -euo pipefail
RES=${RA_RESULTS:-benchmarks/results}
RAW="$RES/raw"
mkdir -p "$RES" "$RAW"
MAX=${RA_MAX_LOAD:-1.0}
WAIT=${RA_WAIT_S:-60}
REPEATS=${RA_REPEATS:-3}
TABLE=${RA_TABLE:-ring_allreduce/data/auto_table.json}
FLAT=ring,tree,recursive_doubling,rabenseifner,mpi

quiet() {  # wait for a quiet node, then run "$@"
    local t0; t0=$(date +%s)
    while awk -v l="$(cut -d' ' -f1 /proc/loadavg)" -v m="$MAX" 'BEGIN{exit !(l>=m)}'; do
        if [ $(( $(date +%s) - t0 )) -ge "$WAIT" ]; then
            echo "# load still $(cut -d' ' -f1 /proc/loadavg) after ${WAIT} s: measuring anyway" >&2; break
        fi
        sleep 2
    done
    echo "+ $*" >&2
    "$@"
}
repeat() {  # repeat NAME P bench-args...: RA_REPEATS runs, merged into $RES/NAME.json and .png
    local name=$1 p=$2; shift 2
    local files=()
    for k in $(seq 1 "$REPEATS"); do
        quiet mpiexec -n "$p" ring-allreduce bench "$@" -q --json "$RAW/${name}_r$k.json" > "$RAW/${name}_r$k.txt"
        files+=("$RAW/${name}_r$k.json")
    done
    python benchmarks/summarize.py --merge "$RES/$name.json" --plot "$RES/$name.png" "${files[@]}" > "$RES/$name.md"
}

# 1. the auto table: every flat algorithm, small sizes in latency mode, the rest in bandwidth mode
for p in 2 3 4; do
    repeat "tune_small_p$p" "$p" --latency -b 8 -e 64K -f 2 -n 500 -w 50 --repeats 6 --rounds 3 --algorithms "$FLAT"
    repeat "tune_large_p$p" "$p" -b 128K -e 64M -f 2 -n 20 -w 3 --rounds 5 --algorithms "$FLAT"
    ring-allreduce bench --tune "$TABLE" --from "$RAW"/tune_small_p${p}_r*.json "$RAW"/tune_large_p${p}_r*.json
done
# 2. the p=2 targets (every registered algorithm, auto, native mpi, and gloo when torch is installed)
repeat bw_p2_inplace 2 -b 4M -e 64M -f 2 -n 30 -w 5 --rounds 5 --inplace
repeat bw_p2_out-of-place 2 -b 4M -e 64M -f 2 -n 30 -w 5 --rounds 5 --out-of-place
repeat latency_p2 2 --latency -b 8 -e 2K -f 2 -n 2000 -w 200 --repeats 10 --rounds 5 \
    --algorithms auto,auto+check,check,recursive_doubling,mpi
# 3. a checked sweep over the whole range with the model fit, and p=3/4 (oversubscribed on 2 cores: reported only)
quiet mpiexec -n 2 ring-allreduce bench -b 8 -e 64M -f 4 -n 20 -w 3 -c --rounds 4 -q --model \
    --json "$RES/sweep_p2.json" --plot "$RES/sweep_p2.png" > "$RES/sweep_p2.txt"
for p in 3 4; do
    for where in inplace out-of-place; do
        repeat "bw_p${p}_$where" "$p" -b 4M -e 64M -f 4 -n 20 -w 3 --rounds 4 "--$where"
    done
done
cat "$RES"/bw_p*.md "$RES"/latency_p2.md
