// Where the trainer's tokens come from: a narrow interface, so that the synthetic tasks
// here and the token-shard loader of src/data plug in alike.
//
// The contract that makes --resume exact: train_batch(index) is a pure function of index
// (and of how the source was built: config and seed). The trainer asks for micro-batch
// index = step * grad_accum + micro, and a resumed run asks again from where the
// checkpoint stopped; a source keeps no hidden cursor.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/batch.h"

namespace moba::train {

struct RunConfig;

// One validation window: T+1 tokens (the model reads the first T and predicts the last T).
struct Window {
  std::vector<int32_t> tokens;  // (T+1)
  // True when all T+1 tokens come from one document, with no padding: only such windows
  // count toward the trailing loss (docs/run_format.md).
  bool single_document = true;
};

class BatchSource {
 public:
  virtual ~BatchSource() = default;
  // The index-th training micro-batch: (B, T+1) tokens, B = train.batch_size, T =
  // model.seq_len, with cu_seqlens and loss_mask when rows pack several documents.
  virtual model::Batch train_batch(uint64_t index) = 0;
  // The validation windows, the same ones at every call.
  virtual std::vector<Window> validation() = 0;
  // Bytes of text per token, for bits per byte (1.0 for byte-level tokens).
  virtual double bytes_per_token() const { return 1.0; }
  // One line for the log, e.g. "synthetic:assoc_recall (V = 64, 32 keys)".
  virtual std::string describe() const = 0;
};

// The source a run's configuration names (config.data, or data_dir when not empty).
// Throws moba::Error for unknown sources.
std::unique_ptr<BatchSource> make_batch_source(const RunConfig& cfg, const std::string& data_dir);

}  // namespace moba::train
