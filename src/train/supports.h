// Can this configuration train on this device? One check, run before anything is allocated
// or written: by `moba train` (the Trainer), by `moba sweep` for every planned run before the
// first trains, and by `moba sweep --plan-only`, which lists the refusals with the plan.
// Without it a sweep planned for the GPU with head dim 6 planned happily and every run
// failed (no kernel). It works in every build: the GPU kernels' limits are known without
// CUDA (model::cuda_kernel_limits).
#pragma once

#include <string>
#include <vector>

#include "train/config.h"

namespace moba::train {

struct Support {
  std::vector<std::string> reasons;  // one per limit broken, each naming the key
  bool ok() const { return reasons.empty(); }
  std::string text() const;  // the reasons joined with "; "
};

// device "cpu": memory (RAM) only; "cuda": the GPU kernels' limits (head dims 64 and 128,
// MoBA block size a power of two >= 64, top_k <= 16, widths multiples of 8) and the GPU's
// memory when a GPU is here (train/memory.h). `cfg` must be valid (RunConfig::validate).
Support supports(const RunConfig& cfg, const std::string& device);

// Throws moba::Error "CONFIG cannot train on DEVICE: REASONS" unless supported.
void check_supported(const RunConfig& cfg, const std::string& device);

}  // namespace moba::train
