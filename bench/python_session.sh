#!/usr/bin/env bash
# The Python package on the GPU machine (issue 11, section 5; docs/python.md), from the
# repository root, in one or a few device calls:
#   STEPS="build test" bench/python_session.sh     package (sm_90a + sm_80 + PTX), the moba CLI,
#                                                  the CUDA ops tests, the same tests on a
#                                                  compute_80-PTX-only build (mma.sync path)
#   STEPS="build bench example" bench/python_session.sh
#                                                  python -m moba.bench (our ops, SDPA cuDNN and
#                                                  flash, FlexAttention with the exact MoBA mask,
#                                                  and `moba bench attention`, one process/call);
#                                                  examples/train_hf_llama.py on the books
# Needs .deps (header-only deps and GoogleTest sources, as bench/gpu_session.sh) and, for
# the example, data/books.tar.xz (a copy of the shared corpus), both carried. Everything it
# measures goes to $OUT: pip.log, pytest_cuda.log, pytest_ptx80.log, bench.md, bench.json,
# example.log, example_metrics.jsonl, session.txt.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-out}
STEPS=${STEPS:-"build test bench example"}
JOBS=${JOBS:-16}
BUILD=${BUILD:-build-gpu}
PY=${PYTHON:-python3}
MOBA=$BUILD/src/cli/moba
mkdir -p "$OUT"
say() { echo "== $(date +%T) $*"; }
die() { echo "python_session: FAILED: $*" >&2; exit 1; }
has() { [[ " $STEPS " == *" $1 "* ]]; }

{ echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown) (plus the working tree sent)"
  "$PY" -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)'
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; } >"$OUT/session.txt" 2>&1

if has build; then
  say "build: the package (pip install --no-build-isolation ./, CUDA sm_90a + sm_80 + PTX)"
  t=$SECONDS
  CMAKE_BUILD_PARALLEL_LEVEL=$JOBS MOBA_CUDA=ON "$PY" -m pip install -q --no-build-isolation \
    --no-deps ./ >"$OUT/pip.log" 2>&1 || { tail -40 "$OUT/pip.log"; die "pip install"; }
  say "build: package in $((SECONDS - t)) s"
  "$PY" -c 'import moba; print(moba.build_info())' | tee -a "$OUT/session.txt"
  if [[ ! -x $MOBA ]]; then
    [[ -f $BUILD/CMakeCache.txt ]] || cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DMOBA_CUDA=ON -DMOBA_EXTRA_INCLUDE="$PWD/.deps/include" \
      -DMOBA_GTEST_SOURCE="$PWD/.deps/googletest" -DMOBA_BUILD_BENCH=OFF >"$OUT/cmake.log" 2>&1 ||
      { tail -30 "$OUT/cmake.log"; die "cmake configure"; }
    cmake --build "$BUILD" -j "$JOBS" --target moba >"$OUT/build.log" 2>&1 ||
      { grep -E "error" -A3 "$OUT/build.log" | head -40; die "build moba"; }
    rm -f "$OUT/cmake.log" "$OUT/build.log"
  fi
  say "build: done ($((SECONDS - t)) s)"
fi

if has test; then
  say "test: python/tests/test_ops_cuda.py and test_hf_attention.py on the GPU"
  MOBA_BIN=$PWD/$MOBA "$PY" -m pytest -q -x python/tests/test_ops_cuda.py \
    python/tests/test_hf_attention.py 2>&1 | tee "$OUT/pytest_cuda.log" | tail -15
  say "test: a compute_80 PTX-only build (no sm_90a code: the mma.sync kernels, JIT-compiled)"
  rm -rf /tmp/moba-ptx80
  CMAKE_BUILD_PARALLEL_LEVEL=$JOBS MOBA_CUDA=ON "$PY" -m pip install -q --no-build-isolation \
    --no-deps --target /tmp/moba-ptx80 -C build-dir=build-pip/ptx80 \
    -C cmake.define.MOBA_CUDA_GENCODE="-gencode=arch=compute_80,code=compute_80" ./ \
    >>"$OUT/pip.log" 2>&1 || { tail -40 "$OUT/pip.log"; die "pip install (PTX 80)"; }
  PYTHONPATH=/tmp/moba-ptx80 MOBA_EXPECT_WGMMA=0 "$PY" -m pytest -q -x -p no:cacheprovider \
    python/tests/test_ops_cuda.py 2>&1 | tee "$OUT/pytest_ptx80.log" | tail -8
fi

if has bench; then
  say "bench: python -m moba.bench (B 1, H 16, D 128, S 512, K 3; T 8K, 32K, 128K)"
  "$PY" -m moba.bench -T 8192 32768 131072 --heads 16 -D 128 -S 512 -K 3 --repeats 10 \
    --moba-bin "$MOBA" --json "$OUT/bench.json" 2>"$OUT/bench.err" | tee "$OUT/bench.md"
  tail -5 "$OUT/bench.err"
fi

if has example; then
  if [[ ! -f data/books-byte/manifest.json ]]; then
    [[ -f data/books.tar.xz ]] || die "example: data/books.tar.xz is missing (carry it)"
    mkdir -p data/corpus && tar -xJf data/books.tar.xz -C data/corpus &&
      "$MOBA" prepare data/corpus -o data/books-byte --strip-gutenberg --tokenizer byte \
        --no-progress >/dev/null || die "example: moba prepare"
  fi
  say "example: examples/train_hf_llama.py (HF Llama, attn_implementation=moba, 300 steps)"
  rm -rf runs/hf-moba
  PYTHONUNBUFFERED=1 "$PY" examples/train_hf_llama.py data/books-byte --steps 300 \
    --out runs/hf-moba 2>&1 | tee "$OUT/example.log" | tail -20
  cp runs/hf-moba/metrics.jsonl "$OUT/example_metrics.jsonl" 2>/dev/null
fi
say "done"
