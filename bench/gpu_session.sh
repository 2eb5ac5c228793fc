#!/usr/bin/env bash
# One device call: build, GPU tests, (optionally) compute-sanitizer, benchmark and peer.
# Runs from the repository root on the GPU machine; logs go to $OUT (or ./out).
#   STEPS="build test bench peer memcheck" bench/gpu_session.sh
#   STEPS="build modeltest modelmemcheck" TARGETS=model_gpu_test bench/gpu_session.sh
#     (the GPU trainer's layer kernels only: builds in about a minute, no attention kernels)
#   STEPS="build cudamodeltest" TARGETS=model_cuda_test bench/gpu_session.sh
#   STEPS="build wgmma" TARGETS="moba attention_gpu_test" bench/gpu_session.sh
#     (the experimental sm_90a dense forward, MOBA_DENSE_FWD=wgmma: tests, then dense
#     timings with and without it at D = 128 and 64; see docs/kernel_notes.md)
#     (the GPU model against the CPU model, and the cuBLASLt matmuls)
#   STEPS="build wgbwd" TARGETS="moba attention_gpu_test" SEQ="8192 32768" bench/gpu_session.sh
#     (the experimental sm_90a dense backward, MOBA_DENSE_BWD=wgmma: ptxas lines, its test,
#     the dense suite with it, dense timings with and without it at D = 128 (H 16) and
#     D = 64 (H 12); writes 3 files: wgbwd_test.log, wgbwd_suite.log, wgbwd_bench.md)
#   STEPS="build mwfwd" TARGETS="moba attention_gpu_test" bench/gpu_session.sh
#     (the sm_90a MoBA forward, MOBA_MOBA_FWD=wgmma: each MobaWgmmaFwdGpu case in its own
#     process, memcheck on two varlen cases, MoBA timings with mma / wgmma; 4 files)
#   STEPS="build mwbwd" TARGETS="moba attention_gpu_test" bench/gpu_session.sh
#     (the experimental sm_90a MoBA backward, MOBA_MOBA_BWD=wgmma: ptxas lines, each case of
#     MobaWgmmaBwdGpu in its own process, memcheck on two varlen cases if all pass, MoBA
#     timings at D = 128, H 16 with each backward; writes 3 files: mwbwd_tests.log,
#     mwbwd_memcheck.log, mwbwd_bench.md)
# Header-only deps come from .deps/include, GoogleTest sources from .deps/googletest.
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
STEPS=${STEPS:-build test modeltest cudamodeltest bench peer}
SEQ=${SEQ:-8192 32768 131072}
BUILD=${BUILD:-build-gpu}
TARGETS=${TARGETS:-moba attention_gpu_test model_gpu_test model_cuda_test}
has() { [[ " $STEPS " == *" $1 "* ]]; }
log() { echo "== $(date +%T) $*"; }

if has info; then
  nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv
  which g++ cmake ninja nvcc; python3 -c 'import torch;print(torch.__version__)'
fi
if has build; then
  log build
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOBA_CUDA=ON \
    -DMOBA_EXTRA_INCLUDE="$PWD/.deps/include" -DMOBA_GTEST_SOURCE="$PWD/.deps/googletest" \
    -DMOBA_BUILD_BENCH=OFF -DMOBA_GPU_TESTS=ON >"$OUT/cmake.log" 2>&1 || { tail -30 "$OUT/cmake.log"; exit 1; }
  ninja -C "$BUILD" -j16 $TARGETS >"$OUT/build.log" 2>&1 || { grep -E "error" -A3 "$OUT/build.log" | head -60; exit 1; }
  grep -E "Compiling entry|registers|spill" "$OUT/build.log" > "$OUT/ptxas.txt"; rm -f "$OUT/build.log" "$OUT/cmake.log"
fi
if has peer; then
  log peer
  PYTHONUNBUFFERED=1 python3 bench/peer_sdpa.py -T $SEQ --json "$OUT/peer_sdpa.json" 2>&1 | tee "$OUT/peer.log"
fi
if has test; then
  log test
  OMP_NUM_THREADS=16 "$BUILD/tests/attention_gpu_test" ${GTEST_FILTER:+--gtest_filter=$GTEST_FILTER} 2>&1 | tee "$OUT/test.log" | grep -E "^\[ *(OK|FAILED|PASSED|SKIPPED) |err|gate:|Failure|Expected|Which|error" | head -150
fi
if has modeltest; then
  log "modeltest: GPU layer kernels (src/model/cuda) against the CPU layers"
  "$BUILD/tests/model_gpu_test" ${GTEST_FILTER:+--gtest_filter=$GTEST_FILTER} 2>&1 | tee "$OUT/model_test.log" | grep -E "^\[ *(OK|FAILED|PASSED|SKIPPED) |err |ulp|GB/s|Failure|Expected|Which|error" | head -150
fi
if has cudamodeltest; then
  log "cudamodeltest: the GPU model against the CPU model (loss, gradients), cuBLASLt matmuls"
  OMP_NUM_THREADS=16 "$BUILD/tests/model_cuda_test" ${GTEST_FILTER:+--gtest_filter=$GTEST_FILTER} 2>&1 | tee "$OUT/model_cuda_test.log" | grep -E "^\[ *(OK|FAILED|PASSED|SKIPPED) |grad worst|loss gpu|loss after|per-token|gate rows|grad_norm|ulp|tensors differ|rejected|gpu err|Failure|Expected|Which|error" | head -250
fi
if has modelmemcheck; then
  log "modelmemcheck: layer kernels under compute-sanitizer (timing test left out)"
  timeout 150 compute-sanitizer --tool memcheck --leak-check no "$BUILD/tests/model_gpu_test" \
    --gtest_filter='-*Timing*' >"$OUT/model_memcheck.log" 2>&1
  tail -3 "$OUT/model_memcheck.log"
fi
if has memcheck; then
  log memcheck
  compute-sanitizer --tool memcheck --leak-check no "$BUILD/tests/attention_gpu_test" \
    --gtest_filter='*dense_varlen_d64*:*moba_varlen_odd*:*moba_k1_d64*:*moba_k_ge_blocks*' >"$OUT/memcheck.log" 2>&1
  tail -5 "$OUT/memcheck.log"
fi
if has bench; then
  log bench
  peer=()
  [[ -f "$OUT/peer_sdpa.json" ]] && peer=(--peer "$OUT/peer_sdpa.json")
  "$BUILD/src/cli/moba" bench attention --device cuda --dtype bf16 -T $SEQ --heads 16 -D 128 \
    -S 512 -K 3 --repeats 10 "${peer[@]}" --out "$OUT/bench.json" | tee "$OUT/bench.md"
fi
if has wgmma; then
  log "wgmma: experimental sm_90a dense forward (MOBA_DENSE_FWD=wgmma)"
  grep -A2 "attn_fwd_wgmma" "$OUT/ptxas.txt" 2>/dev/null | grep -E "spill|registers"
  # A wrong tx byte count or barrier parity hangs the kernel: every step has a timeout.
  timeout 300 "$BUILD/tests/attention_gpu_test" --gtest_filter='*DenseWgmma*' 2>&1 | tee "$OUT/wgmma_test.log" \
    | grep -E "^\[ *(OK|FAILED|PASSED|SKIPPED) |err|wgmma|Failure|Expected|Which|error" | head -80
  echo "wgmma test rc=${PIPESTATUS[0]}"
  # The whole dense suite with the variable set: the backward consumes the wgmma out/lse.
  MOBA_DENSE_FWD=wgmma timeout 300 "$BUILD/tests/attention_gpu_test" \
    --gtest_filter='*dense_*:*moba_k_ge_blocks*' 2>&1 | tee "$OUT/wgmma_suite.log" \
    | grep -E "^\[ *(OK|FAILED|PASSED|SKIPPED) |err|Failure|error" | head -60
  for D in 128 64; do
    for mode in default wgmma; do
      env $([[ $mode == wgmma ]] && echo MOBA_DENSE_FWD=wgmma) timeout 300 "$BUILD/src/cli/moba" bench attention \
        --device cuda --dtype bf16 -T $SEQ --heads 16 -D $D -S 512 -K 3 --repeats 10 \
        --out "$OUT/wgmma_bench_${mode}_d$D.json" > "$OUT/wgmma_bench_${mode}_d$D.md" 2>&1
      echo "-- D=$D $mode"; grep -iE "dense|fwd" "$OUT/wgmma_bench_${mode}_d$D.md" | head -12
    done
  done
fi
if has wgbwd; then
  log "wgbwd: experimental sm_90a dense backward (MOBA_DENSE_BWD=wgmma)"
  grep -A2 "attn_bwd_wgmma" "$OUT/ptxas.txt" 2>/dev/null | grep -E "spill|registers"
  # A wrong tx byte count, barrier parity or named-barrier count hangs the kernel: every
  # run has a timeout.
  timeout 300 "$BUILD/tests/attention_gpu_test" --gtest_filter='*DenseWgmmaBwd*' 2>&1 | tee "$OUT/wgbwd_test.log" \
    | grep -E "^\[ *(OK|FAILED|PASSED|SKIPPED) |err|wgmma|Failure|Expected|Which|error" | head -120
  echo "wgbwd test rc=${PIPESTATUS[0]}"
  # The dense cases of the whole suite with the variable set (dense_backward -> wgmma).
  MOBA_DENSE_BWD=wgmma timeout 300 "$BUILD/tests/attention_gpu_test" --gtest_filter='*dense_*' 2>&1 \
    | tee "$OUT/wgbwd_suite.log" | grep -E "^\[ *(OK|FAILED|PASSED|SKIPPED) |err|Failure|error" | head -60
  echo "wgbwd suite rc=${PIPESTATUS[0]}"
  : > "$OUT/wgbwd_bench.md"
  for DH in "128 16" "64 12"; do
    set -- $DH
    for mode in mma wgmma; do
      { echo "## D=$1 H=$2 MOBA_DENSE_BWD=$mode"
        MOBA_DENSE_BWD=$mode timeout 300 "$BUILD/src/cli/moba" bench attention --device cuda --dtype bf16 \
          -T $SEQ --heads $2 -D $1 -S 512 -K 3 --repeats 10 2>&1
        echo "rc=$?"; } > "$OUT/wgbwd_cur.md"
      cat "$OUT/wgbwd_cur.md" >> "$OUT/wgbwd_bench.md"
      echo "-- D=$1 H=$2 bwd=$mode"; grep -E "^\| 8|^\| 3|^rc=[^0]|rror" "$OUT/wgbwd_cur.md"
      # Backward alone = fwd+bwd - fwd; FLOPs 10 * pairs * D (pairs = H * T (T + 1) / 2).
      grep -E "^\| [0-9]" "$OUT/wgbwd_cur.md" | awk -F'|' -v D=$1 -v H=$2 '{T=$2+0; f=$3+0; fb=$4+0; b=fb-f;
        if (b > 0) printf "   T=%d bwd %.3f ms = %.0f TFLOP/s\n", T, b, 10*H*T*(T+1)/2*D/(b*1e9)}'
    done
  done
  rm -f "$OUT/wgbwd_cur.md"
fi
if has mwfwd; then
  # The sm_90a MoBA forward (MOBA_MOBA_FWD=wgmma, fwd_wgmma.cuh; written compile-only).
  #   STEPS="build mwfwd" TARGETS="moba attention_gpu_test" bench/gpu_session.sh
  # Writes 4 files: mwfwd_test.log, mwfwd_memcheck.log, mwfwd_bench.md, mwfwd_bench.json.
  log "mwfwd: sm_90a MoBA forward (MOBA_MOBA_FWD=wgmma)"
  grep -A2 "moba_fwd_wgmma" "$OUT/ptxas.txt" 2>/dev/null | grep -E "spill|registers"
  # One process per case (a hang or a sticky CUDA error stays in its case), each under a
  # timeout: a wrong tx byte count or barrier parity hangs instead of failing.
  mw_cases=$("$BUILD/tests/attention_gpu_test" --gtest_list_tests --gtest_filter='*MobaWgmmaFwd*' \
    | awk '/^[^ ]/{suite=$1} /^  /{print suite $1}')
  mw_fail=0
  : > "$OUT/mwfwd_test.log"
  for c in $mw_cases; do
    timeout 60 "$BUILD/tests/attention_gpu_test" --gtest_filter="$c" > /tmp/mwfwd_case.log 2>&1
    rc=$?
    cat /tmp/mwfwd_case.log >> "$OUT/mwfwd_test.log"
    echo "rc=$rc" >> "$OUT/mwfwd_test.log"
    [[ $rc -ne 0 ]] || grep -q "^\[  FAILED" /tmp/mwfwd_case.log && mw_fail=1
    st=$(grep -m1 -oE '^\[ +(OK|FAILED|SKIPPED) +\]' /tmp/mwfwd_case.log | tr -d '[] ')
    printf '%-26s rc=%-3s %-7s %s %s\n' "${c##*/}" "$rc" "${st:-?}" \
      "$(grep -m1 -oE '\|wgmma - mma\| out [^ ]+  lse [^ ]+' /tmp/mwfwd_case.log)" \
      "$(grep -m2 -iE 'cuda error|illegal|misaligned|unspecified launch|Failure|Error:' /tmp/mwfwd_case.log | tr '\n' ' ' | cut -c1-160)"
  done
  rm -f /tmp/mwfwd_case.log
  if [[ $mw_fail -eq 0 && -n "$mw_cases" ]]; then
    timeout 300 compute-sanitizer --tool memcheck --leak-check no "$BUILD/tests/attention_gpu_test" \
      --gtest_filter='*MobaWgmmaFwd*mw_varlen_d64_s128_k3:*MobaWgmmaFwd*mw_odd_d128_s128_k4' \
      > "$OUT/mwfwd_memcheck.log" 2>&1
    echo "memcheck rc=$?"; grep -E "ERROR SUMMARY|^\[  (PASSED|FAILED)" "$OUT/mwfwd_memcheck.log"
  else
    echo "memcheck skipped: a case failed (or none was found)"
  fi
  : > "$OUT/mwfwd_bench.md"
  for mode in mma wgmma; do
    echo "## D=128 H=16 S=512 K=3 MOBA_MOBA_FWD=$mode (--skip-dense)" >> "$OUT/mwfwd_bench.md"
    MOBA_MOBA_FWD=$mode timeout 300 "$BUILD/src/cli/moba" bench attention --device cuda --dtype bf16 \
      -T 8192 32768 131072 --heads 16 -D 128 -S 512 -K 3 --repeats 10 --skip-dense \
      --out "/tmp/mwfwd_bench_$mode.json" > /tmp/mwfwd_cur.md 2>&1
    echo "rc=$?" >> /tmp/mwfwd_cur.md
    cat /tmp/mwfwd_cur.md >> "$OUT/mwfwd_bench.md"
    echo "-- MOBA_MOBA_FWD=$mode"; grep -E "^\| [0-9]|^rc=[^0]|rror" /tmp/mwfwd_cur.md
    python3 - "/tmp/mwfwd_bench_$mode.json" <<'PY'
import json, sys
try:
    rows = json.load(open(sys.argv[1]))["rows"]
except Exception as e:
    print("   no JSON:", e); sys.exit(0)
for r in rows:
    ph = r.get("phases_ms", {})
    fwd = {k[5:]: v for k, v in ph.items() if not k.startswith("moba.bwd")}
    print("   T=%d moba fwd %.3f ms (attn %.3f, gate %.3f) | %s" % (r["T"], r["moba_fwd_ms"],
          r["moba_attn_fwd_ms"], r["gate_ms"], ", ".join("%s %.3f" % kv for kv in fwd.items())))
PY
  done
  python3 - "$OUT/mwfwd_bench.json" /tmp/mwfwd_bench_mma.json /tmp/mwfwd_bench_wgmma.json <<'PY'
import json, sys
out = {}
for mode, path in zip(("mma", "wgmma"), sys.argv[2:]):
    try: out[mode] = json.load(open(path))
    except Exception as e: out[mode] = {"error": str(e)}
json.dump(out, open(sys.argv[1], "w"), indent=1)
PY
  rm -f /tmp/mwfwd_bench_mma.json /tmp/mwfwd_bench_wgmma.json /tmp/mwfwd_cur.md
fi
if has mwbwd; then
  log "mwbwd: experimental sm_90a MoBA backward (MOBA_MOBA_BWD=wgmma)"
  grep -A2 "attn_bwd_moba_wgmma" "$OUT/ptxas.txt" 2>/dev/null | grep -E "spill|registers"
  # One process per case: a sticky CUDA error (or a hang: wrong tx bytes, parity, barrier
  # count) in one case must not hide the others.
  T="$BUILD/tests/attention_gpu_test"
  cases=$("$T" --gtest_list_tests --gtest_filter='*MobaWgmmaBwd*' | awk '/^[^ ]/{p=$1} /^  /{print p $1}')
  : > "$OUT/mwbwd_tests.log"
  fails=0
  for c in $cases; do
    timeout 60 "$T" --gtest_filter="$c" > "$OUT/mwbwd_cur.log" 2>&1
    rc=$?
    cat "$OUT/mwbwd_cur.log" >> "$OUT/mwbwd_tests.log"
    [[ $rc -ne 0 ]] && fails=$((fails + 1))
    printf '%-62s rc=%s %s %s\n' "${c##*/}" "$rc" "$(grep -E 'wgmma - mma' "$OUT/mwbwd_cur.log" | sed 's/^ *//')" \
      "$(grep -iE 'cuda error|illegal|misaligned|unspecified launch|Failure' "$OUT/mwbwd_cur.log" | head -2 | tr '\n' ' ')"
  done
  rm -f "$OUT/mwbwd_cur.log"
  echo "mwbwd cases failed: $fails"
  if [[ $fails -eq 0 ]]; then
    timeout 300 compute-sanitizer --tool memcheck --leak-check no "$T" \
      --gtest_filter='*mwb_varlen_d128_s128*:*mwb_odd_d64_s128_k16*' > "$OUT/mwbwd_memcheck.log" 2>&1
    echo "memcheck rc=$?"; tail -3 "$OUT/mwbwd_memcheck.log"
  fi
  : > "$OUT/mwbwd_bench.md"
  for mode in mma wgmma; do
    { echo "## D=128 H=16 S=512 K=3 MOBA_MOBA_BWD=$mode"
      MOBA_MOBA_BWD=$mode timeout 300 "$BUILD/src/cli/moba" bench attention --device cuda --dtype bf16 \
        -T 8192 32768 131072 --heads 16 -D 128 -S 512 -K 3 --repeats 10 --skip-dense \
        --out "/tmp/mwbwd_$mode.json" 2>&1
      echo "rc=$?"; } >> "$OUT/mwbwd_bench.md"
    echo "-- MOBA_MOBA_BWD=$mode"
    sed -n "/MOBA_MOBA_BWD=$mode/,\$p" "$OUT/mwbwd_bench.md" | grep -E "^\| [0-9]|^rc=[^0]|rror"
    # Per-phase MoBA times (ms) of the JSON: the backward kernel alone.
    python3 -c "import json,sys
for r in json.load(open(sys.argv[1])).get('rows', []):
  ph = r.get('phases_ms', {})
  print('   T=%s' % r.get('T'), ' '.join('%s=%.3f' % (k[5:], v) for k, v in ph.items() if 'bwd' in k))" \
      "/tmp/mwbwd_$mode.json" 2>&1 | head -8
  done
fi
if has ncu; then
  log "ncu: backward kernels at T=32768 (MoBA, then dense)"
  sec=(--section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy)
  ncu --kernel-name regex:attn_bwd_kernel --launch-count 1 "${sec[@]}" "$BUILD/src/cli/moba" bench attention \
    --device cuda --dtype bf16 -T 32768 --heads 16 -D 128 -S 512 -K 3 --repeats 1 --skip-dense >"$OUT/ncu_moba_bwd.txt" 2>&1
  ncu --kernel-name regex:attn_bwd_kernel --launch-count 1 "${sec[@]}" "$BUILD/src/cli/moba" bench attention \
    --device cuda --dtype bf16 -T 32768 --heads 16 -D 128 -S 512 -K 3 --repeats 1 >"$OUT/ncu_dense_bwd.txt" 2>&1
  grep -E "DRAM Throughput|Memory Throughput|L2 Hit|Compute \(SM\)|Duration|Warp Cycles Per Issued|Achieved Occupancy|dram__bytes|Mem Busy|Max Bandwidth|L1/TEX Hit" "$OUT"/ncu_*.txt
fi
log done
