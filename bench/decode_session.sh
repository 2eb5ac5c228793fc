#!/usr/bin/env bash
# One device call for the decode kernels (issue 12): build, decode_gpu_test, the PyTorch SDPA
# peers (bench/decode_peers.py), then `moba bench decode` with the peers' JSON. Runs from the
# repository root on the GPU machine; logs and JSON go to $OUT (or ./out).
#   bench/decode_session.sh                         (everything, the shapes)
#   STEPS="build test" bench/decode_session.sh      (correctness only)
#   CONTEXTS="8192 131072" BATCHES=16 bench/decode_session.sh
# Header-only deps come from .deps/include, GoogleTest sources from .deps/googletest.
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
STEPS=${STEPS:-build test peer bench}
CONTEXTS=${CONTEXTS:-8192 32768 131072 524288}
BATCHES=${BATCHES:-1 16}
KV_HEADS=${KV_HEADS:-16 4}
BUILD=${BUILD:-build-gpu}
has() { [[ " $STEPS " == *" $1 "* ]]; }
log() { echo "== $(date +%T) $*"; }

if has build; then
  log build
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOBA_CUDA=ON \
    -DMOBA_EXTRA_INCLUDE="$PWD/.deps/include" -DMOBA_GTEST_SOURCE="$PWD/.deps/googletest" \
    -DMOBA_BUILD_BENCH=OFF -DMOBA_GPU_TESTS=ON >"$OUT/cmake.log" 2>&1 || { tail -30 "$OUT/cmake.log"; exit 1; }
  ninja -C "$BUILD" -j16 moba decode_gpu_test >"$OUT/build.log" 2>&1 || { grep -E "error" -A3 "$OUT/build.log" | head -60; exit 1; }
  grep -A3 -E "Compiling entry.*(decode|gate_s|combine|block_means|append)" "$OUT/build.log" | grep -E "Compiling|registers|spill" > "$OUT/decode_ptxas.txt"
  rm -f "$OUT/build.log" "$OUT/cmake.log"
fi
if has test; then
  log "test: decode_gpu_test (the CUDA decode against the CPU decode reference)"
  OMP_NUM_THREADS=16 timeout 500 "$BUILD/tests/decode_gpu_test" ${GTEST_FILTER:+--gtest_filter=$GTEST_FILTER} 2>&1 \
    | tee "$OUT/decode_test.log" | grep -E "^\[ *(OK|FAILED|PASSED|SKIPPED) |err|gate:|Failure|Expected|Which|error" | head -120
fi
if has memcheck; then
  log memcheck
  timeout 300 compute-sanitizer --tool memcheck --leak-check no "$BUILD/tests/decode_gpu_test" \
    --gtest_filter='*moba_d128_gqa4_s64_k3*:*moba_d64_gqa32*:*dense_d64_gqa4*:*s96*:DecodeGpuErrors*' \
    >"$OUT/decode_memcheck.log" 2>&1
  grep -E "ERROR SUMMARY|^\[  (PASSED|FAILED)" "$OUT/decode_memcheck.log"
fi
if has peer; then
  log "peer: PyTorch SDPA decode (flash, cuDNN)"
  PYTHONUNBUFFERED=1 timeout 400 python3 bench/decode_peers.py -T $CONTEXTS -B $BATCHES --kv-heads $KV_HEADS \
    --json "$OUT/decode_peers.json" 2>&1 | tee "$OUT/decode_peers.md"
fi
if has bench; then
  log "bench: moba bench decode"
  peer=()
  [[ -f "$OUT/decode_peers.json" ]] && peer=(--peer "$OUT/decode_peers.json")
  timeout 400 "$BUILD/src/cli/moba" bench decode -T $CONTEXTS -B $BATCHES --kv-heads $KV_HEADS \
    --heads 16 -D 128 -S 512 -K 3 "${peer[@]}" --out "$OUT/decode_bench.json" | tee "$OUT/decode_bench.md"
fi
log done
