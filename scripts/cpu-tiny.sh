#!/usr/bin/env bash
# The README's main job: on a machine set up by scripts/setup.sh, trains the cpu-tiny
# scaling ladder (tiny models, full attention and MoBA, on the Python 3.11 documentation
# as byte-level tokens) and writes the scaling report with its figures. Builds `moba` if
# needed (only that target), prepares the data once, skips runs already finished and
# resumes an interrupted one, so running it again is cheap. docs/sweep.md has the details.
#   ./scripts/cpu-tiny.sh              -> runs/cpu-tiny/report/report.md
# BUILD_DIR (build), JOBS (all cores), RUNS_DIR (runs/cpu-tiny), DATA_DIR
# (data/pydoc-byte) and DEVICE (cpu; cuda trains on the GPU, `moba sweep --device`) can be
# set. The build is CPU-only (-DMOBA_CUDA=OFF: the CUDA kernels take most of a first
# build's time and the CPU path does not use them) unless a GPU answers `nvidia-smi` or
# DEVICE=cuda; MOBA_CUDA=ON|OFF|AUTO decides instead (ON forces the CUDA kernels). A build
# folder already configured is kept as it is, unless MOBA_CUDA is given.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
build=${BUILD_DIR:-build}
jobs=${JOBS:-$(nproc)}
runs=${RUNS_DIR:-runs/cpu-tiny}
data=${DATA_DIR:-data/pydoc-byte}
device=${DEVICE:-cpu}
text=/usr/share/doc/python3.11/html/_sources
moba=$build/src/cli/moba
stamp() { echo "cpu-tiny: $1 ($(( $(date +%s) - t0 )) s)"; }

cuda=${MOBA_CUDA:-}
if [ ! -f "$build/CMakeCache.txt" ] || [ -n "$cuda" ]; then
  if [ -z "$cuda" ]; then
    if [ "$device" = cuda ] || { command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; }; then
      cuda=AUTO  # the CUDA kernels where nvcc is found
    else
      cuda=OFF   # no GPU here: the CPU build only
    fi
  fi
  generator=()
  [ ! -f "$build/CMakeCache.txt" ] && command -v ninja >/dev/null && generator=(-G Ninja)
  cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DMOBA_CUDA="$cuda"
  stamp "configured (MOBA_CUDA=$cuda)"
fi
cmake --build "$build" -j "$jobs" --target moba
stamp "moba built"

if [ ! -f "$data/manifest.json" ]; then
  [ -d "$text" ] || { echo "cpu-tiny: $text is missing: run ./scripts/setup.sh (python3.11-doc)" >&2; exit 1; }
  "$moba" prepare "$text" -o "$data" --tokenizer byte --no-progress
fi
stamp "data ready in $data"

"$moba" sweep --config sweeps/cpu-tiny.toml -o "$runs" --data "$data" --device "$device"
stamp "sweep done"

# Bucket 6 (positions 384-448): late in the window, where MoBA attends to 3 of 7 blocks.
"$moba" report "$runs" -o "$runs/report" --bucket 6
stamp "report written: $runs/report/report.md"
