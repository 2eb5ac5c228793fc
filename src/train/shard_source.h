// The trainer's tokens from a folder made by `moba prepare` (docs/data.md): a BatchSource
// over data::Dataset.
//
// Training rows, as the run's data_packing says:
// - Packing::document (the default): T + 1 consecutive tokens inside one training document
//   long enough (long-context training: every position has its full left context). No
//   cu_seqlens, no loss_mask.
// - Packing::packed: T + 1 consecutive tokens of the training stream (documents
//   concatenated), with the loader's cu_seqlens (attention, RoPE positions and MoBA blocks
//   restart at each document start) and loss_mask (0 where the target is the first token
//   of the next document, so no position is trained to predict across a boundary).
// Validation windows are the same in both modes: the loader's validation_windows, single
// documents wherever the validation split allows.
//
// Micro-batch `index` is Dataset::train_batch(seed, index, B, T, packing): a pure function
// of (seed, index), as the BatchSource contract wants for exact resume.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "train/batch_source.h"

namespace moba::train {

class ShardSource : public BatchSource {
 public:
  // Opens and verifies `dir` (checksums, ids below the model's vocabulary). Throws
  // moba::Error naming the folder when it cannot serve T + 1-token rows (document mode:
  // no document that long; packed: a training stream shorter than T + 1).
  ShardSource(const std::string& dir, int64_t vocab_size, int64_t seq_len, int64_t batch_size,
              int64_t windows, uint64_t seed,
              data::Packing packing = data::Packing::document);

  model::Batch train_batch(uint64_t index) override;
  std::vector<Window> validation() override;
  double bytes_per_token() const override { return ds_.bytes_per_token(); }
  std::string describe() const override;

  const data::Dataset& dataset() const { return ds_; }
  data::Packing packing() const { return packing_; }

 private:
  data::Dataset ds_;
  int64_t T_, B_, windows_;
  uint64_t seed_;
  data::Packing packing_;
};

// The shard source a run's configuration names (data = a folder, data_packing).
std::unique_ptr<BatchSource> make_shard_source(const RunConfig& cfg, const std::string& dir);

}  // namespace moba::train
