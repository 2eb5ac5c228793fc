// Evaluation of a saved run: the checkpoint of RUN_DIR on the run's own validation windows
// (or those of another prepared folder), the same numbers the trainer's validation writes.
// `moba eval` is this function; tests use it to check that a run's final validation is
// reproducible from its checkpoint in a fresh process.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "train/checkpoint.h"
#include "train/evaluate.h"

namespace moba::train {

struct EvalRunOptions {
  std::string run_dir;           // a run folder with config.toml and a checkpoint
  std::string data_dir;          // token shards to validate on; empty = the run's own data
  std::string attention = "auto";  // auto (the attention of the checkpoint's last step), moba, full
  std::string device = "cpu";    // cpu (float32) or cuda (bf16, as the GPU trainer validates)
  // The windows (the trainer's, data::Dataset::validation_windows, unless changed here):
  std::string split = "val";     // val, or train (windows cut alike from the training split)
  int64_t windows = 0;           // how many; 0 = the run's eval.windows
  int64_t seq_len = 0;           // tokens each window predicts; 0 = model.seq_len (at most that)
  int64_t bucket_size = 0;       // positions per loss bucket; 0 = the run's eval.bucket_size
};

struct EvalRunResult {
  EvalResult eval;
  bool moba = false;        // the attention used: MoBA layers ran MoBA (false: all full)
  TrainState state;         // the checkpoint's state (step, tokens, ...)
  double bytes_per_token = 1.0;
  std::string data;         // what was validated on (the source's description)
  std::string split = "val";
  int64_t seq_len = 0;      // T of the windows
  std::vector<std::string> notes;  // for stderr: checks that could not be made
};

// Throws moba::Error naming the problem (no run, no checkpoint, attention 'moba' asked of a
// model without MoBA layers, an unknown device or split, --seq-len above model.seq_len, a
// data folder whose vocabulary exceeds the model's or whose tokenizer differs from the
// run's data's, ...).
EvalRunResult evaluate_run(const EvalRunOptions& opt);

}  // namespace moba::train
