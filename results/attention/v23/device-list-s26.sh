#!/usr/bin/env bash
# Session 26 device list (run from /tmp/w, a snapshot of the carried tree).
cd /tmp/w || exit 1
export OUT=/tmp/perf TAG=s26
mkdir -p /tmp/perf/bulk /tmp/perf/train
bench/background.sh start gpu \
  "TARGETS='moba attention_gpu_test' STEPS=build bench/perf_session.sh" \
  "STEPS='test' bench/perf_session.sh" \
  "STEPS='dqbulk' ROUNDS=2 bench/perf_session.sh" \
  "MOBA_MOBA_BWD_DQ=bulk OUT=/tmp/perf/bulk STEPS='ncubwd' bench/perf_session.sh" \
  "timeout 300 compute-sanitizer --tool memcheck --leak-check no build-gpu/tests/attention_gpu_test --gtest_filter='*MobaWgmmaBwdGpu*' > /tmp/perf/bulk/memcheck-s26.log 2>&1; echo memcheck rc=\$?; timeout 300 compute-sanitizer --tool synccheck build-gpu/tests/attention_gpu_test --gtest_filter='*MobaWgmmaBwdGpu*' > /tmp/perf/bulk/synccheck-s26.log 2>&1; echo synccheck rc=\$?; tail -2 /tmp/perf/bulk/memcheck-s26.log /tmp/perf/bulk/synccheck-s26.log" \
  "STEPS='peer bench' BENCH_ARGS=--profile OUT=/tmp/perf/train bench/train_session.sh" \
  "STEPS='long' bench/perf_session.sh"
