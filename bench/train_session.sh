#!/usr/bin/env bash
# One device call for the GPU trainer (issue 4): build, GPU model tests, a short learning
# run on the GPU, the PyTorch peer and `moba bench train` in the same call. Logs to $OUT.
#   STEPS="build test recall peer bench" bench/train_session.sh
# Header-only deps come from .deps/include, GoogleTest sources from .deps/googletest
# (copied Debian headers; see bench/gpu_session.sh).
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
STEPS=${STEPS:-build test recall peer bench}
BUILD=${BUILD:-build-gpu}
TRAIN_SEQ=${TRAIN_SEQ:-8192 32768}
has() { [[ " $STEPS " == *" $1 "* ]]; }
log() { echo "== $(date +%T) $*"; }
MOBA="$BUILD/src/cli/moba"

if has build; then
  log build
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOBA_CUDA=ON \
    -DMOBA_EXTRA_INCLUDE="$PWD/.deps/include" -DMOBA_GTEST_SOURCE="$PWD/.deps/googletest" \
    -DMOBA_BUILD_BENCH=OFF -DMOBA_GPU_TESTS=ON >"$OUT/cmake.log" 2>&1 || { tail -30 "$OUT/cmake.log"; exit 1; }
  ninja -C "$BUILD" -j16 moba model_cuda_test trainer_gpu_test model_gpu_test >"$OUT/build.log" 2>&1 || { grep -E "error" -A3 "$OUT/build.log" | head -60; exit 1; }
  rm -f "$OUT/build.log" "$OUT/cmake.log"
fi
if has test; then
  log "test: the GPU model against the CPU model (tests/model_gpu/model_cuda_test.cpp)"
  timeout 240 "$BUILD/tests/model_cuda_test" ${GTEST_FILTER:+--gtest_filter=$GTEST_FILTER} >"$OUT/model_cuda_test.log" 2>&1; echo "model_cuda_test rc=$?"; grep -E "^\[ *(OK|FAILED|PASSED|SKIPPED) |Failure|error" "$OUT/model_cuda_test.log" | head -60
fi
if has trainertest; then
  log "trainertest: the training loop on the GPU (tests/model_gpu/trainer_gpu_test.cpp)"
  timeout 200 "$BUILD/tests/trainer_gpu_test" >"$OUT/trainer_gpu_test.log" 2>&1; echo "trainer_gpu_test rc=$?"
  grep -E "^\[ *(OK|FAILED|PASSED|SKIPPED) |Failure|error|    " "$OUT/trainer_gpu_test.log" | head -40
fi
if has layertest; then
  log "layertest: the layer kernels against the CPU layers (tests/model_gpu/model_gpu_test.cpp)"
  timeout 200 "$BUILD/tests/model_gpu_test" >"$OUT/model_gpu_test.log" 2>&1; echo "model_gpu_test rc=$?"
  grep -E "^\[ *(FAILED|PASSED) |Failure|GB/s" "$OUT/model_gpu_test.log" | head -40
fi
if has recall; then
  log "recall: configs/gpu-recall-{moba,full}.toml on the GPU"
  for a in moba full; do
    rm -rf "runs/gpu-recall-$a"
    timeout 150 "$MOBA" train --device cuda --config "configs/gpu-recall-$a.toml" --out "runs/gpu-recall-$a" \
      >"$OUT/recall-$a.log" 2>&1; echo "rc=$?"
    grep -E "^step|^val|error|finished" "$OUT/recall-$a.log" | tail -22
    cp "runs/gpu-recall-$a/metrics.jsonl" "$OUT/recall-$a.metrics.jsonl" 2>/dev/null
  done
fi
if has peer; then
  log "peer: bench/peer_train.py (PyTorch eager + torch.compile)"
  PYTHONUNBUFFERED=1 timeout 300 python3 bench/peer_train.py -T $TRAIN_SEQ --json "$OUT/peer_train.json" 2>&1 | tee "$OUT/peer_train.log" | tail -20
fi
if has bench; then
  log "bench: moba bench train"
  peer=()
  [[ -f "$OUT/peer_train.json" ]] && peer=(--peer "$OUT/peer_train.json")
  timeout 200 "$MOBA" bench train --device cuda -T $TRAIN_SEQ --attention full moba ${BENCH_ARGS:-} "${peer[@]}" \
    --out "$OUT/bench_train.json" | tee "$OUT/bench_train.md"
fi
log done
