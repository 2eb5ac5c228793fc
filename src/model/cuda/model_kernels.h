// Small kernels of the GPU model (internal to model_cuda.cpp).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace moba::model::cuda {

// y (n) = bf16(x), round to nearest even.
void to_bf16(const float* x, __nv_bfloat16* y, int64_t n, cudaStream_t stream);

// *out = sum of x[i]^2 in double, deterministic: fixed chunks of kSumsqChunk elements
// summed per block, then the chunks in order. partial holds sumsq_chunks(n) doubles.
constexpr int64_t kSumsqChunk = int64_t{1} << 16;
int64_t sumsq_chunks(int64_t n);
void sum_of_squares(const float* x, int64_t n, double* partial, double* out, cudaStream_t stream);

}  // namespace moba::model::cuda
