// `moba sweep`: trains a plan's runs one after another, in-process (train::Trainer), into
// RUNS_DIR/<run name>/ (docs/run_format.md), so that `moba report RUNS_DIR` reads them.
//
// Per run, from what its folder holds:
//   run.json "finished" and the same configuration  -> skipped
//   a checkpoint and the same configuration         -> resumed from it
//   started but no checkpoint yet                    -> its files removed, trained anew
//   nothing                                          -> trained
//   a different configuration                        -> error (the preset changed: use
//                                                       another --runs-dir)
// A run that fails (NaN, bad data) is reported and the sweep goes on; the sweep then
// throws, listing the failed runs.
//
// With gpus = N (`moba sweep --gpus N`, docs/distributed.md) this process still decides
// every run's fate from its folder as above (it is no rank: it trains nothing itself), and
// hands each run to launch_ranks, which trains it data parallel over N GPUs, one process per
// GPU (the CLI's: `moba train --gpus N`'s launcher), and returns once every rank exited 0.
// A rank that fails or hangs fails that run (moba::Error naming the rank) like any failed
// run; the next run gets fresh processes and a fresh NCCL communicator.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>

#include "scaling/plan.h"

namespace moba::scaling {

// One run handed to SweepOptions::launch_ranks.
struct RankRun {
  const train::RunConfig* config = nullptr;  // resolved: what the trainer gets
  std::string run_dir;                       // RUNS_DIR/<run name>
  bool resume = false;                       // continue from its checkpoint
  bool verbose = false;                      // SweepOptions::verbose
};

struct SweepOptions {
  std::string config;            // --config: the preset (sweeps/NAME.toml)
  std::string runs_dir;          // --runs-dir: overrides the preset's runs_dir
  std::string data;              // --data: overrides the preset's data
  std::string eval_data;         // --eval-data: every run's eval.data (validation corpus)
  bool plan_only = false;        // --plan-only: print the plan, train nothing
  std::string plan_json;         // --plan-json: also write the plan (plan_json(), with the device) here
  bool force_reuse = false;      // --force-reuse: allow reading the data more than 4 times
  // --device: "cpu" or "cuda", every run's train::TrainerOptions::device. Not part of a
  // run's configuration: a run started on one device may be resumed on the other.
  std::string device = "cpu";
  std::FILE* out = stdout;       // the plan and the sweep's progress; nullptr = silent
  std::FILE* result = nullptr;   // the closing summary line; nullptr = `out`
  bool trainer_progress = true;  // the trainer's own step lines (to `out`)
  bool verbose = false;          // each run's whole configuration (train::TrainerOptions)
  // Tests: the first run that trains stops after this many steps (as if killed) and the
  // sweep returns. -1: off. Not with gpus.
  int64_t interrupt_after_steps = -1;
  // --gpus N: every run trains data parallel over N GPUs of this machine through
  // launch_ranks (required then), one run after another; device must be "cuda", and every
  // run's train.batch_size a multiple of N. 0: every run trains in this process.
  int gpus = 0;
  std::function<void(const RankRun&)> launch_ranks;
  // Tests: false skips what --device cuda and --gpus check of this build and machine (the
  // CUDA kernels, NCCL, enough devices), so that a stand-in rank program can play the GPUs.
  bool check_machine = true;
};

struct SweepSummary {
  int trained = 0, resumed = 0, skipped = 0, failed = 0;
  bool interrupted = false;
  double seconds = 0;  // wall time of this invocation
};

// Plans, checks data reuse (and, for --device cuda, that this build has the CUDA kernels
// and sees a device; for --gpus N, that it has NCCL, sees N devices and that N divides the
// batch), writes RUNS_DIR/plan.json (with the device and the GPUs) and trains. With
// plan_only, prints the plan (its times for N GPUs) and returns. options.plan_json: the same
// JSON to that file as well, with or without plan_only.
SweepSummary run_sweep(const SweepConfig& sweep, const SweepOptions& options);

}  // namespace moba::scaling
