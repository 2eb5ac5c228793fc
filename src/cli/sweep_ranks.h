// `moba sweep --gpus N`: how one run of the sweep trains over N GPUs. The sweep
// (scaling/sweep.h) decides the run's fate from its folder; this starts, through the
// launcher of `moba train --gpus N` (launcher.h), N ranks of
//
//   PROGRAM train --config TMP/<run>.toml --out RUNS_DIR/<run> --device cuda
//                 --dist-timeout S --dist-check-every K [--resume] [--verbose]
//
// TMP/<run>.toml is the run's resolved configuration (train::to_toml; data paths as the plan
// has them, relative to the folder the sweep runs in, which the ranks share), in a fresh
// folder under the system's temp folder that also holds NCCL's id file, removed after the
// run. Rank 0 writes the run folder as `moba train` always does. The ranks' stdout goes to
// stderr (rank 0's closing line joins its progress there), so that the sweep's stdout keeps
// its own summary only. The launcher's error (naming the rank that failed or hung) is the
// run's failure.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "scaling/sweep.h"

namespace moba::cli {

struct SweepRanksOptions {
  int gpus = 1;  // ranks per run, one per GPU
  // Each rank's executable: this moba (self_executable()); tests: a stand-in.
  std::string program;
  double dist_timeout_s = 600;     // `moba train --dist-timeout`
  int64_t dist_check_every = 100;  // `moba train --dist-check-every`
  // The launcher's (launcher.h): after a rank fails, how long the others may take to exit.
  std::chrono::milliseconds grace{std::chrono::seconds(30)};
  std::chrono::milliseconds kill_grace{std::chrono::seconds(5)};
  std::FILE* log = stderr;  // the launcher's lines
};

// Each rank's argv for one run (argv[0] = options.program), the configuration in config_file.
std::vector<std::string> sweep_rank_command(const SweepRanksOptions& options,
                                            const std::string& config_file,
                                            const scaling::RankRun& run);

// The function the sweep calls for each run (scaling::SweepOptions::launch_ranks): writes
// the configuration, launches the ranks, waits; throws moba::Error when the run failed.
std::function<void(const scaling::RankRun&)> sweep_rank_launcher(SweepRanksOptions options);

}  // namespace moba::cli
