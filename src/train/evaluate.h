// Validation: mean loss over all positions of all windows, per-position-bucket losses,
// and the trailing loss (docs/run_format.md, docs/scaling.md).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "model/model.h"
#include "train/batch_source.h"

namespace moba::train {

struct EvalResult {
  double loss = 0.0;                  // nats/token over all positions of all windows
  int64_t bucket_size = 0;            // positions per bucket
  std::vector<double> bucket_losses;  // bucket i: positions [i*bucket_size, (i+1)*bucket_size)
  // The last bucket over single-document windows only; empty when there are none.
  std::optional<double> trailing_loss;
  int64_t windows = 0;
  // (windows) each window's mean loss over its positions, and (windows, buckets) its bucket
  // means: the study pairs MoBA and full attention window by window (both attention types
  // of a size see the same windows) for its bootstrap intervals.
  std::vector<double> window_losses;
  std::vector<std::vector<double>> window_bucket_losses;
  std::string windows_hash;  // FNV-1a 64 of every window's tokens, hex: the same windows?
  // (T) mean loss at each position, over all windows (for tests and tools).
  std::vector<double> position_losses;
};

// Runs the model (no gradient) over the windows, eval_batch at a time. moba_phase as in
// training at this point (a MoBA model switched to full attention evaluates as full).
// The same over any model: `forward` runs a batch and returns its (B*T) per-token losses
// (the GPU trainer passes its ModelCuda's).
using TokenLossFn = std::function<std::vector<float>(const model::Batch&)>;
EvalResult evaluate(const TokenLossFn& forward, const std::vector<Window>& windows,
                    int64_t eval_batch, int64_t bucket_size);

EvalResult evaluate(model::Model<float>& model, std::span<const float> params,
                    const std::vector<Window>& windows, int64_t eval_batch, int64_t bucket_size,
                    bool moba_phase);

}  // namespace moba::train
