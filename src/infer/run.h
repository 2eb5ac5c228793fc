// A trained run, loaded for inference: its resolved configuration, the checkpoint's weights,
// the attention its last training step used, and the tokenizer of its data. What
// `moba generate` and `moba eval passkey` start from.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "train/checkpoint.h"
#include "train/config.h"

namespace moba::infer {

struct InferenceRun {
  std::string run_dir;
  train::RunConfig cfg;  // resolved
  std::vector<float> params;
  train::TrainState state;
  // MoBA layers run MoBA: the attention of the checkpoint's last training step (full after
  // a MoBA-to-full switch), unless asked otherwise.
  bool moba = false;
  std::string data_dir;                        // the prepared folder the run trained on
  std::unique_ptr<data::Tokenizer> tokenizer;  // its tokenizer; null for synthetic data
};

// attention: "auto" (the last training step's), "moba" or "full". checkpoint: a checkpoint
// folder to load instead of RUN_DIR's own (empty: the run's). Errors (moba::Error) name the
// problem: no such folder, not a run folder (no config.toml), no checkpoint, a checkpoint
// whose tensors do not match the configuration, "moba" asked of a run without MoBA layers.
// need_tokenizer: a run trained on synthetic data (no tokenizer) is an error too.
InferenceRun load_inference_run(const std::string& run_dir, const std::string& attention = "auto",
                                const std::string& checkpoint = "", bool need_tokenizer = true);

}  // namespace moba::infer
