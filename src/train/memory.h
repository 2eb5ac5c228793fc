// The memory planner: what training a configuration needs, checked against the machine
// before anything is allocated. Without it, layers = 1e9 or seq_len = 1e9 ran for minutes
// and ended in "internal error: std::bad_alloc" (issue 15, finding 9). The sweep planner
// (src/scaling/plan.cpp) shows the same estimate per run.
#pragma once

#include <cstdint>
#include <string>

#include "model/config.h"

namespace moba::train {

struct MemoryEstimate {
  double weights = 0;      // the parameters (fp32 master copy; + bf16 copy on the GPU)
  double gradients = 0;    // one value per parameter
  double optimizer = 0;    // AdamW's two moments, fp32
  double activations = 0;  // kept for the backward pass of one micro-batch, and the logits
  double total() const { return weights + gradients + optimizer + activations; }
};

// Bytes of training `cfg` with micro-batches of `batch_size` rows on `device` ("cpu" or
// "cuda"). A lower bound on what the trainer allocates (buffers it reuses are left out), so a
// configuration above the machine's memory can never run. Computed in double precision: no
// size overflows, however large the configuration.
MemoryEstimate estimate_memory(const model::ModelConfig& cfg, int64_t batch_size,
                               const std::string& device);

// The memory training can use: physical RAM (sysconf) for "cpu", the device's total memory
// (cudaMemGetInfo) for "cuda"; 0 when unknown.
double machine_memory(const std::string& device);

// "" when the configuration fits, else why not, naming the sizes and both figures (the
// estimate exceeds the machine's memory, or a size product would not fit in 64 bits).
std::string memory_problem(const model::ModelConfig& cfg, int64_t batch_size, int64_t grad_accum,
                           const std::string& device);
// Throws moba::Error with memory_problem's reason. Call before allocating.
void check_memory(const model::ModelConfig& cfg, int64_t batch_size, int64_t grad_accum,
                  const std::string& device);

// "1.5 GB", "12.0 TB": bytes for messages.
std::string format_bytes(double bytes);

}  // namespace moba::train
