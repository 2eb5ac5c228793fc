// The mean of K over one MoBA block of one kv head, shared by the training gate's means
// (gate.cu, split into bf16 terms) and the decode cache's (decode.cu, fp32).
#pragma once

#include <cuda_bf16.h>

#include <cstddef>

namespace moba::attn::cuda {

constexpr int kBlockMeanThreads = 256;  // the CTA that calls block_mean_column

// The S rows of D bf16 at base (rows row_stride elements apart), summed per column in
// double by the CTA's 256 threads: D / 8 threads per row, each summing one 16-byte chunk
// (8 columns) of every (256 / (D / 8))-th row (D 64: 32 row slices, D 128: 16), then the
// slices' sums added in slice order. bf16 sums are exact in double, so the order does not
// matter and the result, sum / S in double rounded to float, is the CPU gate's and KV
// cache's value. Returns column threadIdx.x's mean (0 for threads >= D). Every thread of
// the CTA calls it (a barrier inside); D is a multiple of 8 dividing 2048, row_stride and
// base 16-byte aligned.
__device__ __forceinline__ float block_mean_column(const __nv_bfloat16* __restrict__ base,
                                                   size_t row_stride, int S, int D) {
  __shared__ double part[kBlockMeanThreads * 8];  // (slices, D)
  const int tpr = D / 8, slices = kBlockMeanThreads / tpr;
  const int t = threadIdx.x, chunk = t % tpr, slice = t / tpr;
  double acc[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
  for (int s = slice; s < S; s += slices) {
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(base + s * row_stride) + chunk);
    const __nv_bfloat162* h2 = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = __bfloat1622float2(h2[i]);
      acc[2 * i] += static_cast<double>(f.x);
      acc[2 * i + 1] += static_cast<double>(f.y);
    }
  }
#pragma unroll
  for (int i = 0; i < 8; ++i) part[slice * D + chunk * 8 + i] = acc[i];
  __syncthreads();
  if (t >= D) return 0.f;
  double sum = 0.0;
  for (int y = 0; y < slices; ++y) sum += part[y * D + t];
  return static_cast<float>(sum / static_cast<double>(S));
}

}  // namespace moba::attn::cuda
