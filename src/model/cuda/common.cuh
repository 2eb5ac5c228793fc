// Helpers shared by this folder's kernels; not part of the API.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "core/cuda_check.cuh"

namespace moba::model::cuda::detail {

inline unsigned grid_for(int64_t n, int threads) {
  // Grid-stride loops cover the rest: a capped grid keeps launches legal for any n.
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 65535 * 32 ? (blocks > 0 ? blocks : 1) : 65535 * 32);
}

__device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(float x) { return x; }
template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}

}  // namespace moba::model::cuda::detail
