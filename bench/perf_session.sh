#!/usr/bin/env bash
# Device calls for issue 16 (kernel speed) and issue 12's prefill bar: build; the attention
# GPU tests; MoBA and dense timings with the per-phase breakdown at D 128 (H 16) and D 64
# (H 12, the trainer's and the inference bench's shape); the 128K prefill of the 12-layer
# model; an Nsight Compute pass over the MoBA forward's kernels at D 64, 128K; the chunked
# MoBA forward (v16: chunktest = its GPU tests and memcheck, chunk = time and peak memory
# over MOBA_FWD_CHUNK_TOKENS, CHUNKS="2048 4096 8192 16384" against one pass); long = MoBA
# alone from 128K to 2M tokens, dense1m = MoBA against our dense forward at 1M, prefill10m =
# MoBA forwards at 1M-10M with Hq 8, Hkv 2 (S 512 K 3 and the paper's S 4096 K 12); ncubar
# = ncu on every MoBA and dense kernel at 32K, D 128 (ncubwd = its MoBA backward pass alone); ncugate = ncu on the gate and the
# gather index at 1M (one pass), at 128K (chunked forward) and at 8K, D 64 (the
# trainer's); peer = PyTorch SDPA's cuDNN and flash at both shapes, which d128 and d64 then compare with; pp = the dense wgmma
# forward with and without MOBA_FWD_PINGPONG, alternately (ROUNDS); gaterows = the gate with
# MOBA_GATE_ROWS 128 and 256, alternately (ROUNDS); pieces = the single pass's gather index
# with MOBA_INDEX_PIECE_TOKENS 2048 and auto, alternately (ROUNDS); dqbulk = the MoBA backward
# with MOBA_MOBA_BWD_DQ red and bulk, alternately (ROUNDS). Each ncu step keeps its raw
# dump (NAME-TAG.txt) and writes issue 16's limiter per kernel beside it, NAME-limiters-TAG.md
# (scripts/ncu-limiters.py: the rule in its docstring), and prints that table.
# Runs from the repository root on the GPU machine; logs and JSON go to $OUT (or ./out).
#   STEPS="build test d128 d64 prefill ncu" bench/perf_session.sh
#   STEPS="build ncubar ncugate" TAG=s24 bench/perf_session.sh
# Carry .deps (header-only libraries, GoogleTest sources).
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
STEPS=${STEPS:-build test d128 d64 prefill}
BUILD=${BUILD:-build-gpu}
TARGETS=${TARGETS:-moba attention_gpu_test}
MOBA="$BUILD/src/cli/moba"
TAG=${TAG:-run}
has() { [[ " $STEPS " == *" $1 "* ]]; }
log() { echo "== $(date +%T) $*"; }
# limiters NAME: the limiter table of the ncu dump $OUT/NAME-$TAG.txt, printed and written to
# $OUT/NAME-limiters-$TAG.md; the dump's tail when it holds no kernel (ncu failed).
limiters() {
  python3 scripts/ncu-limiters.py "$OUT/$1-$TAG.txt" --md "$OUT/$1-limiters-$TAG.md" \
    || tail -20 "$OUT/$1-$TAG.txt"
}

if has build; then
  log build
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOBA_CUDA=ON \
    -DMOBA_EXTRA_INCLUDE="$PWD/.deps/include" -DMOBA_GTEST_SOURCE="$PWD/.deps/googletest" \
    -DMOBA_BUILD_BENCH=OFF -DMOBA_GPU_TESTS=ON >"$OUT/cmake.log" 2>&1 || { tail -30 "$OUT/cmake.log"; exit 1; }
  ninja -C "$BUILD" -j16 $TARGETS >"$OUT/build.log" 2>&1 || { grep -E "error" -A3 "$OUT/build.log" | head -60; exit 1; }
  rm -f "$OUT/build.log" "$OUT/cmake.log"
fi
if has oldbuild; then
  # The same benchmarks on an earlier commit, in the same call: carry
  # `git archive REV | gzip > .deps/old.tar.gz`; its moba is built in /tmp/old/build.
  log "oldbuild: $(ls -la .deps/old.tar.gz)"
  rm -rf /tmp/old && mkdir -p /tmp/old && tar -xzf .deps/old.tar.gz -C /tmp/old
  cmake -S /tmp/old -B /tmp/old/build -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOBA_CUDA=ON \
    -DMOBA_EXTRA_INCLUDE="$PWD/.deps/include" -DMOBA_GTEST_SOURCE="$PWD/.deps/googletest" \
    -DMOBA_BUILD_BENCH=OFF >/dev/null 2>&1 && ninja -C /tmp/old/build -j16 moba >/dev/null 2>&1 \
    || echo "oldbuild: FAILED"
fi
if has test; then
  log "test: attention_gpu_test (every kernel against the CPU reference)"
  # The ping-pong tests (v20: named barriers; a wrong count would hang) run after the rest,
  # under their own timeout, so that a hang there loses nothing else.
  OMP_NUM_THREADS=16 timeout 400 "$BUILD/tests/attention_gpu_test" --gtest_filter="${FILTER:-*}:-*PingPong*" 2>&1 \
    | tee "$OUT/test-$TAG.log" | grep -E "^\[ *(FAILED|PASSED|SKIPPED) |Failure" | head -40
  log "test: the ping-pong cases (MOBA_FWD_PINGPONG=1)"
  OMP_NUM_THREADS=16 timeout 120 "$BUILD/tests/attention_gpu_test" --gtest_filter='*PingPong*' 2>&1 \
    | tee "$OUT/test-pp-$TAG.log" | grep -E "^\[ *(FAILED|PASSED|SKIPPED) |Failure" | head -20
  echo "ping-pong tests exit status: ${PIPESTATUS[0]} (124: timed out, a hang)"
fi
if has model; then
  log "model: model_gpu_test, model_cuda_test, decoder_cuda_test, decode_gpu_test"
  for t in model_gpu_test model_cuda_test decoder_cuda_test decode_gpu_test; do
    OMP_NUM_THREADS=16 timeout 300 "$BUILD/tests/$t" 2>&1 | tee "$OUT/$t-$TAG.log" \
      | grep -E "^\[ *(FAILED|PASSED|SKIPPED) |Failure" | head -20
  done
fi
if has memcheck; then
  log memcheck
  timeout 300 compute-sanitizer --tool memcheck --leak-check no "$BUILD/tests/attention_gpu_test" \
    --gtest_filter='*dense_varlen_d64*:*moba_varlen_odd*:*moba_k1_d64*:*MobaWgmmaFwdGpu*varlen*' \
    >"$OUT/memcheck-$TAG.log" 2>&1
  tail -3 "$OUT/memcheck-$TAG.log"
fi
if has chunktest; then
  log "chunktest: the chunked MoBA forward's GPU tests, then memcheck on its varlen cases"
  OMP_NUM_THREADS=16 timeout 300 "$BUILD/tests/attention_gpu_test" --gtest_filter='*MobaChunkFwdGpu*' 2>&1 \
    | tee "$OUT/chunktest-$TAG.log" | grep -E "^\[ *(FAILED|PASSED|SKIPPED) |Failure|chunk [0-9]+:" | head -60
  OMP_NUM_THREADS=16 timeout 300 compute-sanitizer --tool memcheck --leak-check no \
    "$BUILD/tests/attention_gpu_test" --gtest_filter='*MobaChunkFwdGpu*varlen_d64*:*MobaChunkFwdGpu*varlen_s64*' \
    >"$OUT/chunkmemcheck-$TAG.log" 2>&1
  tail -3 "$OUT/chunkmemcheck-$TAG.log"
fi
# The chunked MoBA forward: MoBA fwd and fwd+bwd time and peak memory per chunk size (0 = one
# pass, which also runs dense for the "peak MiB MoBA / dense" column), D 128 (H 16) and D 64
# (H 12), 32K and 128K.
if has chunk; then
  for c in 0 ${CHUNKS:-2048 4096 8192 16384}; do
    skip=--skip-dense; [[ $c == 0 ]] && skip=
    log "chunk: --fwd-chunk $c"
    "$MOBA" bench attention --device cuda --dtype bf16 -T 32768 131072 --heads 16 -D 128 \
      -S 512 -K 3 --repeats 10 --fwd-chunk "$c" $skip --out "$OUT/chunk-$c-d128-$TAG.json" 2>&1 \
      | grep -E "^\| [0-9]"
    "$MOBA" bench attention --device cuda --dtype bf16 -T 32768 131072 --heads 12 -D 64 \
      -S 512 -K 3 --repeats 10 --fwd-chunk "$c" $skip --out "$OUT/chunk-$c-d64-$TAG.json" 2>&1 \
      | grep -E "^\| [0-9]"
  done
fi
# Dense and MoBA timings of the earlier commit (oldbuild) and of this tree, alternately.
if has ab; then
  for round in $(seq 1 ${ROUNDS:-2}); do
    for which in old new; do
      m="$MOBA"; [[ $which == old ]] && m=/tmp/old/build/src/cli/moba
      log "ab round $round: $which, D 128 (H 16) and D 64 (H 12)"
      "$m" bench attention --device cuda --dtype bf16 -T 8192 32768 131072 --heads 16 -D 128 \
        -S 512 -K 3 --repeats 10 --out "$OUT/ab-$which-$round-d128.json" 2>&1 | grep -E "^\| [0-9]"
      "$m" bench attention --device cuda --dtype bf16 -T 8192 32768 131072 --heads 12 -D 64 \
        -S 512 -K 3 --repeats 10 --out "$OUT/ab-$which-$round-d64.json" 2>&1 | grep -E "^\| [0-9]"
    done
  done
fi
# knob_ab STEP VAR "VALUES" SUFFIX:ARGS...: ROUNDS rounds (default 2); in each, every value
# of VAR in turn runs `moba bench attention --device cuda --dtype bf16 ARGS` once per
# SUFFIX:ARGS, into $OUT/STEP<value>-<round>-SUFFIX-TAG.json, and prints its table rows.
knob_ab() {
  local step=$1 var=$2 values=$3 round v spec
  shift 3
  for round in $(seq 1 "${ROUNDS:-2}"); do
    for v in $values; do
      log "$step round $round: $var=$v"
      for spec in "$@"; do
        # shellcheck disable=SC2086  # ARGS split into words on purpose
        env "$var=$v" "$MOBA" bench attention --device cuda --dtype bf16 ${spec#*:} \
          --out "$OUT/$step$v-$round-${spec%%:*}-$TAG.json" 2>&1 | grep -E "^\| [0-9]"
      done
    done
  done
}
# v20: the dense wgmma forward with and without the consumer warpgroups' ping-pong
# (MOBA_FWD_PINGPONG 0 and 1; the default, auto, is 1 for the dense forward), forwards only, alternately, D 128 (H 16) and D 64 (H 12).
if has pp; then
  knob_ab pp MOBA_FWD_PINGPONG "0 1" \
    "d128:--fwd-only -T 8192 32768 131072 --heads 16 -D 128 -S 512 -K 3 --repeats 10" \
    "d64:--fwd-only -T 8192 32768 131072 --heads 12 -D 64 -S 512 -K 3 --repeats 10"
fi
# v21 (docs/kernel_notes.md): the gate with MOBA_GATE_ROWS=128 and 256 (two m-tiles per warp;
# the default, auto, picks 256 on large grids), alternately (ROUNDS), MoBA's forward alone (--skip-dense) at D 128, H 16 (8K,
# 32K, 128K; then 1M one pass, one repeat) and D 64, H 12 (8K..128K): gate_ms per row.
if has gaterows; then
  knob_ab gaterows MOBA_GATE_ROWS "128 256" \
    "d128:--fwd-only --skip-dense -T 8192 32768 131072 --heads 16 -D 128 -S 512 -K 3 --repeats 10" \
    "d64:--fwd-only --skip-dense -T 8192 32768 131072 --heads 12 -D 64 -S 512 -K 3 --repeats 10" \
    "1m:--fwd-only --skip-dense -T 1048576 --heads 16 -D 128 -S 512 -K 3 --repeats 1"
fi
# v22 (docs/kernel_notes.md): the single pass's gather index on pieces of 2048 tokens (the old
# default) and on MOBA_INDEX_PIECE_TOKENS=auto's (the default since session 25), alternately (ROUNDS): MoBA fwd and fwd+bwd
# (--skip-dense) at the trainer's shape (D 64, H 12) and at D 128, H 16, 8K and 32K; the
# gather_index phase and the totals.
# v23 (docs/kernel_notes.md): the MoBA backward's gathered dQ by red.global.add.v2 (default)
# and by the bulk reduce (MOBA_MOBA_BWD_DQ=bulk), alternately (ROUNDS): MoBA fwd+bwd alone at
# D 128, H 16 and D 64, H 12, 8K..128K; the bwd_moba_wgmma phase per row.
if has dqbulk; then
  knob_ab dqbulk MOBA_MOBA_BWD_DQ "red bulk" \
    "d128:--skip-dense -T 8192 32768 131072 --heads 16 -D 128 -S 512 -K 3 --repeats 10" \
    "d64:--skip-dense -T 8192 32768 131072 --heads 12 -D 64 -S 512 -K 3 --repeats 10"
fi
if has pieces; then
  knob_ab pieces MOBA_INDEX_PIECE_TOKENS "2048 auto" \
    "d64:--skip-dense -T 8192 32768 --heads 12 -D 64 -S 512 -K 3 --repeats 10" \
    "d128:--skip-dense -T 8192 32768 --heads 16 -D 128 -S 512 -K 3 --repeats 10"
fi
# MoBA alone at long T (issue 16: time growing no faster than T log T), D 128 (H 16) and
# D 64 (H 12), 128K to 2M; then MoBA against our dense at 1M (one repeat: dense fwd+bwd is
# ~30 s there).
if has long; then
  log "long: MoBA alone, 128K..2M"
  "$MOBA" bench attention --device cuda --dtype bf16 -T 131072 262144 524288 1048576 2097152 \
    --heads 16 -D 128 -S 512 -K 3 --repeats 3 --skip-dense --out "$OUT/long-d128-$TAG.json" 2>&1 | grep -E "^\| [0-9]"
  "$MOBA" bench attention --device cuda --dtype bf16 -T 131072 262144 524288 1048576 2097152 \
    --heads 12 -D 64 -S 512 -K 3 --repeats 3 --skip-dense --out "$OUT/long-d64-$TAG.json" 2>&1 | grep -E "^\| [0-9]"
fi
if has prefill10m; then
  log "prefill10m: MoBA forwards alone (--fwd-only) at 1M, 2M, 10M tokens, Hq 8, Hkv 2, D 128, S 512, K 3"
  # One pass to 2M; at 10M the single pass's fp32 partials (82 GB at K 3, 450 GB at K 12)
  # do not fit beside the tensors: chunks of 64K query tokens (the chunked forward, v16/v18).
  timeout 300 "$MOBA" bench attention --device cuda --dtype bf16 --fwd-only --skip-dense \
    -T 1048576 2097152 --heads 8 --kv-heads 2 -D 128 -S 512 -K 3 --repeats 3 \
    --out "$OUT/prefill10m-2m-$TAG.json" 2>&1 | grep -E "^\| [0-9]"
  timeout 300 "$MOBA" bench attention --device cuda --dtype bf16 --fwd-only --skip-dense \
    -T 10000000 --heads 8 --kv-heads 2 -D 128 -S 512 -K 3 --repeats 3 --fwd-chunk 65536 \
    --out "$OUT/prefill10m-$TAG.json" 2>&1 | grep -E "^\| [0-9]"
  log "prefill10m: the paper's S 4096, K 12 at 1M and 10M (chunks of 64K)"
  timeout 300 "$MOBA" bench attention --device cuda --dtype bf16 --fwd-only --skip-dense \
    -T 1048576 10000000 --heads 8 --kv-heads 2 -D 128 -S 4096 -K 12 --repeats 3 --fwd-chunk 65536 \
    --out "$OUT/prefill10m-s4096-$TAG.json" 2>&1 | grep -E "^\| [0-9]"
fi
if has dense1m; then
  # Forwards (the paper's prefill comparison): our dense forward at 1M is ~8 s a call.
  log "dense1m: MoBA (S 512, K 3 and S 4096, K 12) against our dense forward at 1M, D 128, H 16"
  timeout 400 "$MOBA" bench attention --device cuda --dtype bf16 --fwd-only -T 1048576 --heads 16 \
    -D 128 -S 512 -K 3 --repeats 1 --out "$OUT/dense1m-$TAG.json" 2>&1 | grep -E "^\| [0-9]"
  timeout 400 "$MOBA" bench attention --device cuda --dtype bf16 --fwd-only -T 1048576 --heads 16 \
    -D 128 -S 4096 -K 12 --repeats 1 --fwd-chunk 262144 --out "$OUT/dense1m-s4096-$TAG.json" 2>&1 \
    | grep -E "^\| [0-9]"
fi
# The peers (PyTorch SDPA: cuDNN and flash backends) at both shapes, before d128 / d64, which
# then print our ratios to them (issue 16: dense at least 1.0x cuDNN at D 64 and 128).
if has peer; then
  log "peer: PyTorch SDPA at D 128 (H 16) and D 64 (H 12)"
  python3 bench/peer_sdpa.py -T 8192 32768 131072 --heads 16 -D 128 --json "$OUT/peer-d128-$TAG.json" 2>&1 | tail -4
  python3 bench/peer_sdpa.py -T 8192 32768 131072 --heads 12 -D 64 --json "$OUT/peer-d64-$TAG.json" 2>&1 | tail -4
fi
peer_of() { [[ -f $OUT/peer-$1-$TAG.json ]] && echo "--peer $OUT/peer-$1-$TAG.json"; }
if has d128; then
  log "d128: B 1, H 16, D 128, S 512, K 3"
  "$MOBA" bench attention --device cuda --dtype bf16 -T 8192 32768 131072 --heads 16 -D 128 \
    -S 512 -K 3 --repeats 10 $(peer_of d128) --out "$OUT/d128-$TAG.json" 2>&1 | tail -14
fi
if has d64; then
  log "d64: B 1, H 12, D 64, S 512, K 3"
  "$MOBA" bench attention --device cuda --dtype bf16 -T 8192 32768 131072 --heads 12 -D 64 \
    -S 512 -K 3 --repeats 10 $(peer_of d64) --out "$OUT/d64-$TAG.json" 2>&1 | tail -14
fi
if has prefill; then
  log "prefill: 12 layers, width 768, 128K tokens, MoBA"
  timeout 300 "$MOBA" bench infer --attention moba --prefill 131072 -T 8192 -B 1 --steps 4 --phases \
    --out "$OUT/prefill-moba-$TAG.json" 2>&1 | tee "$OUT/prefill-moba-$TAG.log" | grep -E "prefill|^\| [a-z_*]+ \| [0-9]"
fi
if has prefillfull; then
  log "prefill: 12 layers, width 768, 128K tokens, full"
  timeout 300 "$MOBA" bench infer --attention full --prefill 131072 -T 8192 -B 1 --steps 4 --phases \
    --out "$OUT/prefill-full-$TAG.json" 2>&1 | tee "$OUT/prefill-full-$TAG.log" | grep -E "prefill|^\| [a-z_*]+ \| [0-9]"
fi
if has ncu; then
  log "ncu: the MoBA forward's kernels at D 64, H 12, T 128K"
  timeout 300 ncu --clock-control none -k 'regex:moba_fwd_wgmma|gate_mma|block_means|bucket' --launch-count 12 \
    --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats \
    "$MOBA" bench attention --device cuda --dtype bf16 -T 131072 --heads 12 -D 64 -S 512 -K 3 \
    --repeats 1 --skip-dense > "$OUT/ncu-$TAG.txt" 2>&1
  limiters ncu
fi
# The limiter per kernel at issue 16's bar shapes (D 128, H 16, S 512, K 3, 32K): every
# kernel of MoBA's fwd+bwd (gate, index, past, current, delta, backward, dQ conversion) and
# of dense fwd+bwd, one launch each, Speed of Light + occupancy + warp stalls + compute
# workload (pipes); each dump's limiter table in ncubar-{moba,mobabwd,dense}-limiters-TAG.md.
# ncubar_pass NAME COUNT REGEX [bench args...]: ncu on the first COUNT launches that REGEX
# matches, `moba bench attention` at the bar shape, dump NAME-TAG.txt, then its limiter table.
ncubar_pass() {
  local name=$1 count=$2 regex=$3
  shift 3
  timeout 300 ncu --clock-control none --launch-count "$count" -k "regex:$regex" \
    --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats \
    --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
    "$MOBA" bench attention --device cuda --dtype bf16 -T 32768 --heads 16 -D 128 -S 512 -K 3 \
    --repeats 1 "$@" > "$OUT/$name-$TAG.txt" 2>&1
  limiters "$name"
}
if has ncubar; then
  log "ncubar: MoBA fwd+bwd kernels, D 128, H 16, T 32K"
  ncubar_pass ncubar-moba 60 \
    'moba_fwd_wgmma|attn_bwd_moba_wgmma|gate_mma|block_means|bucket|wg_prep|dq_convert|delta' --skip-dense
  log "ncubar: dense fwd+bwd kernels, D 128, H 16, T 32K"
  ncubar_pass ncubar-dense 12 'attn_fwd_wgmma|attn_bwd_wgmma|wg_prep|dq_convert'
fi
# The 60 launches of ncubar's MoBA pass end inside the forward timing's warm-ups (seen in s24:
# no backward kernel in the dump), so MoBA's backward kernels get their own pass, in ncubar
# and alone as ncubwd: -k matches only them, and they first run in the fwd+bwd timing, so
# the first 12 matches are its first calls. Table: ncubar-mobabwd-limiters-TAG.md.
if has ncubar || has ncubwd; then
  log "ncubar: MoBA backward kernels, D 128, H 16, T 32K"
  ncubar_pass ncubar-mobabwd 12 'attn_bwd_moba_wgmma|wg_prep|dq_convert|delta' --skip-dense
fi
# The gate and the gather index at long T (issue 16: the gate <= 10% of MoBA's forward): ncu
# on block_means, gate_mma and the bucket kernels (count, scan, fill) at 1M tokens, one pass
# (--fwd-only), and at 128K with the chunked forward (--fwd-chunk 4096), D 128, H 16, S 512,
# K 3, and at 8K, D 64, H 12; limiter tables ncugate-{1m,chunk,8k}-limiters-TAG.md. Launch order (src/cli/bench_cuda.cpp,
# --skip-dense): the gate timing's 3 warm-ups + 1 call, then the forward timing's 3 + 1, ...;
# a moba_gate is block_means + gate_mma (2 launches), a moba_forward builds one gather index
# (3 bucket launches: count, scan, fill). --launch-skip / --launch-count count only the
# launches -k matches: skip 4 (the first two gate calls), profile 10 = gate calls 3 and 4,
# then the first two forwards' index builds: every kernel twice.
if has ncugate; then
  for which in 1m chunk 8k; do
    heads="--heads 16 -D 128"
    if [[ $which == 1m ]]; then
      shape="--fwd-only -T 1048576"
      log "ncugate: gate and gather-index kernels, one pass at 1M, D 128, H 16"
    elif [[ $which == chunk ]]; then
      shape="-T 131072 --fwd-chunk 4096"
      log "ncugate: gate and gather-index kernels, 128K, chunked forward (C 4096), D 128, H 16"
    else
      # The trainer's shape, where the gate and the index are ~1/3 of MoBA's forward
      # (results/attention/v17: 0.076 of 0.214 ms): launch-bound or not?
      shape="-T 8192"
      heads="--heads 12 -D 64"
      log "ncugate: gate and gather-index kernels, 8K, D 64, H 12 (the trainer's shape)"
    fi
    timeout 300 ncu --clock-control none -k 'regex:gate_mma|block_means|bucket' \
      --launch-skip 4 --launch-count 10 \
      --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats \
      --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
      "$MOBA" bench attention --device cuda --dtype bf16 $shape $heads -S 512 -K 3 \
      --repeats 1 --skip-dense > "$OUT/ncugate-$which-$TAG.txt" 2>&1
    limiters "ncugate-$which"
  done
fi
log done
