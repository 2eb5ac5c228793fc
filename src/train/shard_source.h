// The trainer's tokens from a folder made by `moba prepare` (docs/data.md): a BatchSource
// over data::Dataset.
//
// Rows are Packing::document windows: T + 1 consecutive tokens inside one training
// document long enough (long-context training: every position has its full left
// context, so the position buckets and the trailing loss measure real long context).
// Packed rows would need the loader's loss_mask (a target that starts the next document
// must not count), and model::Batch carries no mask, so packed rows are not offered.
//
// Micro-batch `index` is Dataset::train_batch(seed, index, B, T): a pure function of
// (seed, index), as the BatchSource contract wants for exact resume.
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
  // moba::Error naming the folder when it cannot serve T + 1-token document windows.
  ShardSource(const std::string& dir, int64_t vocab_size, int64_t seq_len, int64_t batch_size,
              int64_t windows, uint64_t seed);

  model::Batch train_batch(uint64_t index) override;
  std::vector<Window> validation() override;
  double bytes_per_token() const override { return ds_.bytes_per_token(); }
  std::string describe() const override;

  const data::Dataset& dataset() const { return ds_; }

 private:
  data::Dataset ds_;
  int64_t T_, B_, windows_;
  uint64_t seed_;
};

// The shard source a run's configuration names (data = a folder).
std::unique_ptr<BatchSource> make_shard_source(const RunConfig& cfg, const std::string& dir);

}  // namespace moba::train
