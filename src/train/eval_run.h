// Evaluation of a saved run: the checkpoint of RUN_DIR on the run's own validation windows
// (or those of another prepared folder), the same numbers the trainer's validation writes.
// `moba eval` is this function; tests use it to check that a run's final validation is
// reproducible from its checkpoint in a fresh process.
#pragma once

#include <cstdint>
#include <string>

#include "train/checkpoint.h"
#include "train/evaluate.h"

namespace moba::train {

struct EvalRunOptions {
  std::string run_dir;           // a run folder with config.toml and a checkpoint
  std::string data_dir;          // token shards to validate on; empty = the run's own data
  std::string attention = "auto";  // auto (the attention of the checkpoint's last step), moba, full
  std::string device = "cpu";    // cpu (float32) or cuda (bf16, as the GPU trainer validates)
};

struct EvalRunResult {
  EvalResult eval;
  bool moba = false;        // the attention used: MoBA layers ran MoBA (false: all full)
  TrainState state;         // the checkpoint's state (step, tokens, ...)
  double bytes_per_token = 1.0;
  std::string data;         // what was validated on (the source's description)
};

// Throws moba::Error naming the problem (no run, no checkpoint, attention 'moba' asked of a
// model without MoBA layers, an unknown device, ...).
EvalRunResult evaluate_run(const EvalRunOptions& opt);

}  // namespace moba::train
