// The CUDA half of `moba bench attention` (built only with the CUDA kernels).
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace moba::cli {

struct CudaBenchShape {
  int64_t batch, heads, kv_heads, head_dim, block_size, top_k;
  int repeats;
  uint64_t seed;
  bool skip_dense;
};

// One row of the table: ms, TFLOP/s, density, speed-up and memory for sequence length T.
nlohmann::json bench_cuda_one(const CudaBenchShape& shape, int64_t T);
std::string cuda_device_name();

}  // namespace moba::cli
