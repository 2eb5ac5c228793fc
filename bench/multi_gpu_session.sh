#!/usr/bin/env bash
# Issue 14's runs on a machine of several GPUs (nvidia-h200-x2 or larger; none had been lent
# when this was written): one device call, from the repository root, logs and results to
# $OUT. Carry .deps (header-only libraries, GoogleTest sources). NVLink multicast stays off
# (NCCL_NVLS_ENABLE=0, as the launcher also sets for its ranks).
#   STEPS="build test dp cp" GPUS=2 bench/multi_gpu_session.sh
# Steps:
#   build  moba and the NCCL / context-parallel GPU tests;
#   test   trainer_nccl_test (its two-GPU cases), nccl_communicator_test,
#          context_parallel_gpu_test (OverNccl: R ranks on R GPUs), model_cuda_cp_test;
#   dp     configs/dp-12x768-8k.toml on 1 GPU, then on $GPUS with `moba train --gpus`: the
#          metrics of both (tokens/s, loss per step) and the comparison (scaling = tokens/s
#          ratio; the bar is >= 0.95 x GPUS; the loss curves' largest relative difference);
#   cp     context parallel at a T one GPU cannot hold: configs/cp-12x768-512k.toml with
#          `moba train --context-parallel $GPUS --device cuda` (and one GPU's refusal or
#          out-of-memory error on the same config, for the record).
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
STEPS=${STEPS:-build test dp cp}
GPUS=${GPUS:-2}
BUILD=${BUILD:-build-gpu}
MOBA="$BUILD/src/cli/moba"
export NCCL_NVLS_ENABLE=0 OMP_NUM_THREADS=${OMP_NUM_THREADS:-16}
has() { [[ " $STEPS " == *" $1 "* ]]; }
log() { echo "== $(date +%T) $*"; }
log "GPUs here: $(nvidia-smi -L 2>/dev/null | wc -l)"

if has build; then
  log build
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOBA_CUDA=ON \
    -DMOBA_EXTRA_INCLUDE="$PWD/.deps/include" -DMOBA_GTEST_SOURCE="$PWD/.deps/googletest" \
    -DMOBA_BUILD_BENCH=OFF -DMOBA_GPU_TESTS=ON >"$OUT/cmake.log" 2>&1 || { tail -30 "$OUT/cmake.log"; exit 1; }
  ninja -C "$BUILD" -j"$(nproc)" moba trainer_nccl_test nccl_communicator_test \
    context_parallel_gpu_test model_cuda_cp_test >"$OUT/build.log" 2>&1 \
    || { grep -E "error" -A3 "$OUT/build.log" | head -60; exit 1; }
  rm -f "$OUT/build.log" "$OUT/cmake.log"
fi
if has test; then
  for t in nccl_communicator_test trainer_nccl_test context_parallel_gpu_test model_cuda_cp_test; do
    log "test: $t"
    timeout 500 "$BUILD/tests/$t" >"$OUT/$t.log" 2>&1; echo "$t rc=$?"
    grep -E "^\[ *(OK|FAILED|PASSED|SKIPPED) |Failure|^    R " "$OUT/$t.log" | head -40
  done
fi
# metrics NAME: rank 0's metrics.jsonl of runs/NAME, copied to $OUT.
metrics() { cp "runs/$1/metrics.jsonl" "$OUT/$1.metrics.jsonl" 2>/dev/null || echo "no metrics for $1"; }
if has dp; then
  log "dp: configs/dp-12x768-8k.toml on 1 GPU"
  rm -rf runs/dp1 "runs/dp$GPUS"
  timeout 400 "$MOBA" train --device cuda --config configs/dp-12x768-8k.toml --out runs/dp1 \
    >"$OUT/dp1.log" 2>&1; echo "rc=$?"; tail -3 "$OUT/dp1.log"; metrics dp1
  log "dp: the same on $GPUS GPUs (moba train --gpus $GPUS)"
  timeout 400 "$MOBA" train --gpus "$GPUS" --config configs/dp-12x768-8k.toml --out "runs/dp$GPUS" \
    >"$OUT/dp$GPUS.log" 2>&1; echo "rc=$?"; tail -3 "$OUT/dp$GPUS.log"; metrics "dp$GPUS"
  python3 - "$OUT/dp1.metrics.jsonl" "$OUT/dp$GPUS.metrics.jsonl" "$GPUS" <<'PY' | tee "$OUT/dp-compare.md"
import json, sys
def load(p):
    rows = [json.loads(l) for l in open(p)]
    return [r for r in rows if r.get("kind", "train") == "train" and "tokens_per_s" in r]
one, many, n = load(sys.argv[1]), load(sys.argv[2]), int(sys.argv[3])
skip = 2  # the first logged steps hold the warm-up
tps1 = sum(r["tokens_per_s"] for r in one[skip:]) / max(1, len(one[skip:]))
tpsn = sum(r["tokens_per_s"] for r in many[skip:]) / max(1, len(many[skip:]))
print(f"| GPUs | tokens/s (mean of logged steps after {skip}) | scaling | bar (0.95 x GPUs) |")
print("|---|---|---|---|")
print(f"| 1 | {tps1:,.0f} | 1.00 | |")
print(f"| {n} | {tpsn:,.0f} | {tpsn / tps1:.2f} | {0.95 * n:.2f} {'holds' if tpsn / tps1 >= 0.95 * n else 'not met'} |")
worst = max(abs(a["loss"] - b["loss"]) / abs(a["loss"]) for a, b in zip(one, many))
print(f"\nloss curves, {min(len(one), len(many))} logged steps: largest relative difference {worst:.2e}")
PY
fi
if has cp; then
  log "cp: configs/cp-12x768-512k.toml over $GPUS GPUs (moba train --context-parallel $GPUS)"
  rm -rf runs/cp runs/cp1
  timeout 500 "$MOBA" train --device cuda --context-parallel "$GPUS" --config configs/cp-12x768-512k.toml \
    --out runs/cp >"$OUT/cp.log" 2>&1; echo "rc=$?"; tail -5 "$OUT/cp.log"; metrics cp
  log "cp: the same config on one GPU (expected: refused or out of memory)"
  timeout 300 "$MOBA" train --device cuda --config configs/cp-12x768-512k.toml --out runs/cp1 \
    >"$OUT/cp1.log" 2>&1; echo "rc=$?"; tail -3 "$OUT/cp1.log"
fi
log done
