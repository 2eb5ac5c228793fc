#!/usr/bin/env bash
# The device call that produced results/attention/v11 (one call, logs returned as $OUT/logs.tgz):
# build; the dense suite; STEPS=mwbwd and STEPS=mwfwd of gpu_session.sh; both wgmma MoBA
# kernels together; memcheck of the default dense path and of one whole-model case.
# Run from the repository root with .deps carried: `bash bench/v11_session.sh`.
set -uo pipefail
export OUT
SECONDS=0
B=build-gpu; T=$B/tests/attention_gpu_test
STEPS=build TARGETS="moba attention_gpu_test model_cuda_test" bench/gpu_session.sh || exit 1
echo "== built at ${SECONDS}s"
timeout 150 $T --gtest_filter='-*MobaWgmma*' > $OUT/suite.log 2>&1; echo "suite rc=$? at ${SECONDS}s"
grep -E "^\[ *(PASSED|FAILED)|CUDA error" $OUT/suite.log | head
STEPS=mwbwd bench/gpu_session.sh 2>&1 | grep -vE "^== " ; echo "mwbwd done at ${SECONDS}s"
STEPS=mwfwd bench/gpu_session.sh 2>&1 | grep -vE "^== " ; echo "mwfwd done at ${SECONDS}s"
if (( SECONDS < 320 )); then
  echo "== both MoBA wgmma kernels"
  MOBA_MOBA_FWD=wgmma MOBA_MOBA_BWD=wgmma timeout 60 $B/src/cli/moba bench attention --device cuda --dtype bf16 \
    -T 8192 32768 131072 --heads 16 -D 128 -S 512 -K 3 --repeats 10 --skip-dense --out $OUT/moba_both.json 2>&1 | grep -E "^\| [0-9]"
fi
if (( SECONDS < 350 )); then
  timeout 80 compute-sanitizer --tool memcheck --leak-check no $T --gtest_filter='*DenseWgmmaGpu*wg_varlen*:*DenseWgmmaGpu*wg_odd*:*dense_varlen_d64*' > $OUT/memcheck_default.log 2>&1
  echo "memcheck default rc=$?"; grep -E "ERROR SUMMARY|^\[  (PASSED|FAILED)" $OUT/memcheck_default.log
fi
if (( SECONDS < 385 )); then
  timeout 70 compute-sanitizer --tool memcheck --leak-check no $B/tests/model_cuda_test --gtest_filter='*gqa_tied_packed_mask*' > $OUT/memcheck_model.log 2>&1
  echo "memcheck model rc=$?"; grep -E "ERROR SUMMARY|^\[  (PASSED|FAILED)" $OUT/memcheck_model.log
fi
cd $OUT && tar czf logs.tgz --exclude=logs.tgz * && ls | grep -v logs.tgz | xargs rm -f; echo "end at ${SECONDS}s"
