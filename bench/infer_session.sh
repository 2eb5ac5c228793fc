#!/usr/bin/env bash
# Device calls for inference (issue 12): build; the decode tests (kernels and the whole GPU
# decoder against the CPU); the decode-attention benchmark with its PyTorch SDPA peers
# (bench/decode_session.sh's steps); the whole-model benchmark (moba bench infer); the
# passkey test of a study-size MoBA model and its full-attention twin. Runs from the
# repository root on the GPU machine; logs, JSON and figures go to $OUT (or ./out).
#   STEPS="build test decode infer" bench/infer_session.sh
#   STEPS="build data passkey" bench/infer_session.sh        (trains L6 twice, ~4 min)
# Carry .deps (header-only libraries, GoogleTest sources) and, for data, data/books.tar.xz.
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
STEPS=${STEPS:-build test decode infer}
BUILD=${BUILD:-build-gpu}
MOBA="$BUILD/src/cli/moba"
PASSKEY_LENGTHS=${PASSKEY_LENGTHS:-512,1024,2048,4096,8000}
PASSKEY_DEPTHS=${PASSKEY_DEPTHS:-0,0.25,0.5,0.75,1}
PASSKEY_TRIALS=${PASSKEY_TRIALS:-20}
has() { [[ " $STEPS " == *" $1 "* ]]; }
log() { echo "== $(date +%T) $*"; }

if has build; then
  log build
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOBA_CUDA=ON \
    -DMOBA_EXTRA_INCLUDE="$PWD/.deps/include" -DMOBA_GTEST_SOURCE="$PWD/.deps/googletest" \
    -DMOBA_BUILD_BENCH=OFF -DMOBA_GPU_TESTS=ON >"$OUT/cmake.log" 2>&1 || { tail -30 "$OUT/cmake.log"; exit 1; }
  ninja -C "$BUILD" -j16 moba decode_gpu_test decoder_cuda_test >"$OUT/build.log" 2>&1 \
    || { grep -E "error" -A3 "$OUT/build.log" | head -60; exit 1; }
  rm -f "$OUT/build.log" "$OUT/cmake.log"
fi
if has test; then
  log "test: decoder_cuda_test (prefill + decode on the GPU against the CPU model's forward)"
  timeout 300 "$BUILD/tests/decoder_cuda_test" 2>&1 | tee "$OUT/decoder_test.log" \
    | grep -E "^\[ *(OK|FAILED|PASSED|SKIPPED) |decode vs|Failure|Expected|error" | head -60
  log "test: decode_gpu_test (the decode kernels against the CPU decode reference)"
  OMP_NUM_THREADS=16 timeout 300 "$BUILD/tests/decode_gpu_test" 2>&1 | tee "$OUT/decode_test.log" \
    | grep -E "^\[ *(FAILED|PASSED) |Failure" | head -30
fi
if has decode; then
  STEPS="peer bench" BUILD="$BUILD" OUT="$OUT" bench/decode_session.sh
fi
if has infer; then
  log "infer: moba bench infer (12 layers, width 768: prefill at 128K, decode at 32K and 128K)"
  timeout 500 "$MOBA" bench infer --prefill 131072 -T 32768 131072 -B 1 16 \
    --out "$OUT/infer_bench.json" 2>&1 | tee "$OUT/infer_bench.md"
fi
if has data; then
  log "data: the books, byte-level (docs/data.md)"
  mkdir -p data/corpus && tar -xJf data/books.tar.xz -C data/corpus
  "$MOBA" prepare data/corpus -o data/books-byte --strip-gutenberg --tokenizer byte 2>&1 | tail -2
fi
if has passkey; then
  for a in moba full; do
    log "passkey: train L6 ($a), the study's h100-small shape and recipe"
    sed "s/^kind = .*/kind = \"$a\"/; s/^name = .*/name = 'passkey-L6-$a'/" \
      configs/passkey-L6.toml > "/tmp/passkey-L6-$a.toml"
    rm -rf "runs/passkey-L6-$a"
    timeout 400 "$MOBA" train --device cuda --config "/tmp/passkey-L6-$a.toml" -o "runs/passkey-L6-$a" \
      > "$OUT/train-$a.log" 2>&1; echo "train rc=$?"; grep -E "^val|error" "$OUT/train-$a.log" | tail -3
    cp "runs/passkey-L6-$a/metrics.jsonl" "$OUT/passkey-L6-$a.metrics.jsonl"
    log "passkey: eval ($a)"
    timeout 300 "$MOBA" eval passkey --run "runs/passkey-L6-$a" --device cuda \
      --lengths "$PASSKEY_LENGTHS" --depths "$PASSKEY_DEPTHS" --trials "$PASSKEY_TRIALS" --batch 8 \
      -o "$OUT/passkey-$a" 2>&1 | tail -12
  done
fi
if has generate; then
  for a in moba full; do
    log "generate: runs/passkey-L6-$a, 400 bytes, temperature 0.8, seed 1 (cuda, then cpu)"
    "$MOBA" generate --run "runs/passkey-L6-$a" --device cuda --prompt "It was a dark and stormy night; " \
      -n 400 -t 0.8 --top-p 0.95 --seed 1 -o "$OUT/generate-$a-cuda.json" 2>&1 | tail -6
    "$MOBA" generate --run "runs/passkey-L6-$a" --device cpu --prompt "It was a dark and stormy night; " \
      -n 60 -t 0.8 --top-p 0.95 --seed 1 -o "$OUT/generate-$a-cpu.json" 2>&1 | tail -3
    "$MOBA" generate --run "runs/passkey-L6-$a" --device cuda --plan --memory-gb 140 | tail -14
  done
fi
if has prefillprof; then
  log "prefillprof: MoBA prefill at 128K with each MoBA forward kernel"
  for k in wgmma mma; do
    echo "MOBA_MOBA_FWD=$k"
    MOBA_MOBA_FWD=$k "$MOBA" bench infer --attention moba --prefill 131072 -T 8192 -B 1 --steps 4 2>&1 | grep -E "prefill"
  done
fi
log done
