#!/usr/bin/env bash
# The GPU check for the day a GPU is lent: install the carried wheels, run the gpu and cudasim test tiers with
# RING_ALLREDUCE_REQUIRE_GPU=1 (a missing GPU fails instead of skipping), then the GPU benchmarks; JSON and PNG
# go to $OUT. Budget: under 8 minutes (each step has its own timeout; the total is checked at the end).
#
# Needs: an NVIDIA GPU, python3 with numpy, scikit-learn, CuPy, numba(-cuda), pytest, pytest-timeout (torch and
# matplotlib optional), and in .whl/ the wheels it lacks, for its Python: the mpich wheel (libmpi and mpiexec; no
# MPI library needs to be installed), mpi4py and pytest-mpi. The package itself runs from this checkout.
# The wheels go in with --prefix, not --target: --target drops the mpich wheel's lib/ (libmpi.so.12). A numpy wheel
# may come too: the H200 image's numba-cuda fails on its own numpy 2.5 (np.row_stack is gone), so 2.4 is carried.
#
# Usage: OUT=/some/dir benchmarks/gpu_check.sh [--dry-run] [--quick]
#   --dry-run  print every command instead of running it (no install, no GPU); what CI checks
#   --quick    benchmark sizes up to 64 MiB
set -euo pipefail

DRY=0
QUICK=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    --quick) QUICK=(--quick) ;;
    *) echo "gpu_check.sh: unknown argument $arg (use --dry-run, --quick)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
SITE="${GPU_CHECK_SITE:-/tmp/site}"
START=$(date +%s)
BUDGET=480
STATUS=0

run() {  # run <seconds> <label> <command...>: time-limited, logged, failure recorded but not fatal
  local limit="$1" label="$2"
  shift 2
  if [ "$DRY" = 1 ]; then
    echo "[dry-run] ($label, ${limit}s) $*"
    return 0
  fi
  echo "=== $label"
  local t0 rc
  t0=$(date +%s)
  set +e
  timeout --kill-after=10 "$limit" "$@" > >(tee "$OUT/$label.log") 2>&1
  rc=$?
  set -e
  echo "=== $label: exit $rc in $(( $(date +%s) - t0 )) s"
  if [ "$rc" != 0 ]; then STATUS=1; fi
  echo "{\"step\": \"$label\", \"exit\": $rc, \"seconds\": $(( $(date +%s) - t0 ))}" >> "$OUT/steps.jsonl"
}

if [ "$DRY" = 0 ]; then
  mkdir -p "$OUT"
  : > "$OUT/steps.jsonl"
  command -v nvidia-smi >/dev/null && nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
  shopt -s nullglob
  wheels=(.whl/*.whl)
  if [ ${#wheels[@]} = 0 ]; then
    echo "gpu_check.sh: no wheels in .whl/" >&2
    exit 2
  fi
fi
run 60 install python3 -m pip install -q --no-index --no-deps --no-compile --ignore-installed --prefix "$SITE" .whl/*.whl
# where the prefix scheme put things (a venv: $SITE/lib/pythonX.Y/site-packages; Debian: $SITE/local/...)
found() { find "$SITE" "$@" 2>/dev/null | head -n 1; }
SITE_PKG=$(dirname "$(dirname "$(found -path '*-packages/mpi4py/__init__.py')")" 2>/dev/null || true)
SITE_BIN=$(dirname "$(found -name mpiexec -path '*/bin/*')" 2>/dev/null || true)
SITE_LIB=$(dirname "$(found -name 'libmpi.so.12')" 2>/dev/null || true)
if [ "$DRY" = 0 ] && { [ -z "$SITE_PKG" ] || [ -z "$SITE_BIN" ] || [ -z "$SITE_LIB" ]; }; then
  echo "gpu_check.sh: the install left no mpi4py package, mpiexec or libmpi.so.12 under $SITE" >&2
  exit 2
fi
export PYTHONPATH="$PWD:$SITE_PKG${PYTHONPATH:+:$PYTHONPATH}"
export LD_LIBRARY_PATH="$SITE_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$SITE_BIN:$PATH"
echo "gpu_check.sh: packages from $SITE_PKG, mpiexec from $SITE_BIN, libmpi from $SITE_LIB"
[ "$DRY" = 1 ] || ls "$SITE_PKG"
export RING_ALLREDUCE_REQUIRE_GPU=1
run 30 versions python3 -c 'import numpy, mpi4py, cupy, numba; from mpi4py import MPI; print("numpy", numpy.__version__, "mpi4py", mpi4py.__version__, "cupy", cupy.__version__, "numba", numba.__version__, MPI.Get_library_version().splitlines()[0]); print("GPU", cupy.cuda.runtime.getDeviceProperties(0)["name"])'

run 170 tests-gpu python3 tests/run.py --tiers gpu
run 60 tests-cudasim python3 tests/run.py --tiers cudasim
run 100 bench-kernels-staging-mlp-codec python3 benchmarks/gpu_bench.py --sections kernels,staging,mlp,codec \
  --out "$OUT" --repeats 7 "${QUICK[@]}"
run 60 bench-allreduce mpiexec -n 2 python3 benchmarks/gpu_bench.py --sections allreduce --out "$OUT" --repeats 5 \
  "${QUICK[@]}"

if [ "$DRY" = 0 ]; then
  took=$(( $(date +%s) - START ))
  echo "gpu_check.sh: ${took} s (budget ${BUDGET} s), status $STATUS; results in $OUT"
  if [ "$took" -gt "$BUDGET" ]; then echo "gpu_check.sh: over budget" >&2; STATUS=1; fi
fi
exit "$STATUS"
