// The CUDA half of `moba bench attention` (built only with the CUDA kernels).
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include <nlohmann/json.hpp>

namespace moba::cli {

struct CudaBenchShape {
  int64_t batch, heads, kv_heads, head_dim, block_size, top_k;
  int repeats;
  uint64_t seed;
  bool skip_dense;
  // The MoBA forward's query chunk (attention/fwd_chunks.h): tokens, 0 = single pass,
  // -1 = the environment's MOBA_FWD_CHUNK_TOKENS.
  int64_t fwd_chunk = -1;
  // Forwards only: no dout, dq, dk, dv allocated, no backward timed (the row has no
  // *_fwd_bwd_* keys and the phases are the forward's).
  bool fwd_only = false;
};

// One row of the table: ms, TFLOP/s, density, speed-up and memory for sequence length T.
nlohmann::json bench_cuda_one(const CudaBenchShape& shape, int64_t T);
std::string cuda_device_name();

// The median of `repeats` CUDA-event timings of fn (milliseconds, on the current stream)
// after `warmup` untimed calls: `moba bench attention --device cuda` and `moba bench decode`.
double cuda_median_ms(int warmup, int repeats, const std::function<void()>& fn);

}  // namespace moba::cli
