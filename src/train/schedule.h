// Learning rate: linear warm-up, then a cosine down to min_lr_ratio * lr at the last step.
#pragma once

#include <cmath>
#include <cstdint>
#include <numbers>

#include "train/config.h"

namespace moba::train {

// Learning rate of update `step` (0-based: the first update is step 0) of `steps`.
inline double learning_rate(const OptimConfig& t, int64_t step) {
  const double peak = t.lr, low = t.lr * t.min_lr_ratio;
  if (step < t.warmup_steps)
    return peak * static_cast<double>(step + 1) / static_cast<double>(t.warmup_steps);
  const int64_t decay_steps = t.steps - t.warmup_steps;
  if (decay_steps <= 1) return peak;
  const double progress = std::min(
      1.0, static_cast<double>(step - t.warmup_steps) / static_cast<double>(decay_steps - 1));
  return low + 0.5 * (peak - low) * (1.0 + std::cos(std::numbers::pi * progress));
}

}  // namespace moba::train
