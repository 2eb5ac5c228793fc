// A run's checkpoint: RUN_DIR/checkpoint/ holds
//   model.safetensors      the weights, named as in model/params.h ("layers.0.attn.wq", ...)
//   optimizer.safetensors  AdamW moments "adam_m.<name>", "adam_v.<name>"
//   state.json             step, tokens, FLOPs, elapsed time, data position, seed, and the
//                          size and FNV-1a 64 checksum of each .safetensors file (verified
//                          on load: a flipped byte is an error naming the file)
// Saving writes a fresh RUN_DIR/checkpoint.tmp/ (state.json last, through a rename), then
// swaps it in by renames (checkpoint -> checkpoint.old, checkpoint.tmp -> checkpoint,
// remove checkpoint.old). At every instant one complete checkpoint exists: loading takes
// checkpoint when complete, else the newer complete one of checkpoint.old and
// checkpoint.tmp (a crash fell inside the swap), and the next save first moves that one
// back to checkpoint, so that a second crash cannot lose it.
//
// RNG: training draws no random numbers after initialisation (no dropout; the data is a
// pure function of the micro-batch index), so the state to restore is the seed and the
// data position.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "model/params.h"
#include "train/adamw.h"

namespace moba::train {

struct TrainState {
  int64_t step = 0;         // optimizer steps done
  int64_t tokens = 0;       // training tokens seen
  double flops_6nd = 0.0;   // cumulative, see docs/run_format.md
  double flops_exec = 0.0;  // cumulative
  double elapsed_s = 0.0;   // training wall time, summed over resumed sessions
  uint64_t next_batch = 0;  // index of the next training micro-batch (data position)
  uint64_t seed = 0;
  // The attention the weights were trained with, e.g. "moba S=512 K=3 full_last_layers=0
  // moba_to_full_at=1" (empty in checkpoints written before it was recorded): resume refuses
  // a run whose configuration says otherwise.
  std::string attention;
};

void save_checkpoint(const std::string& run_dir, const model::ParamLayout& layout,
                     std::span<const float> params, AdamW& adam, const TrainState& state);

// True when RUN_DIR holds a checkpoint (or the fallback of an interrupted swap).
bool has_checkpoint(const std::string& run_dir);
// The step of the checkpoint load_checkpoint would restore; -1 when there is none.
int64_t checkpoint_step(const std::string& run_dir);

// Restores params, the optimizer and the state. Tensors must match the layout by name and
// shape; any missing, extra, misshaped or corrupt piece is a moba::Error naming the file.
TrainState load_checkpoint(const std::string& run_dir, const model::ParamLayout& layout,
                           std::span<float> params, AdamW& adam);

// The weights and state only (export, `moba logits`): no optimizer is read.
TrainState load_checkpoint_weights(const std::string& run_dir, const model::ParamLayout& layout,
                                   std::span<float> params);
// The same from a checkpoint folder itself (one holding state.json and model.safetensors,
// e.g. a copy kept aside: `moba generate --checkpoint DIR`), checksums verified.
TrainState load_checkpoint_folder_weights(const std::string& checkpoint_dir,
                                          const model::ParamLayout& layout,
                                          std::span<float> params);

}  // namespace moba::train
