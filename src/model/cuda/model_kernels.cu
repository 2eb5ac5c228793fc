// Small kernels of the GPU model (model_cuda.cpp): the bf16 copy of the weights and the
// gradient norm.
#include "model/cuda/common.cuh"
#include "model/cuda/model_kernels.h"

namespace moba::model::cuda {
namespace {

__global__ void to_bf16_kernel(const float* __restrict__ x, __nv_bfloat16* __restrict__ y,
                               int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x)
    y[i] = __float2bfloat16_rn(x[i]);
}

constexpr int kNormThreads = 256;

// Each block sums the squares of its fixed chunk in double, in a fixed order (a strided
// sum per thread, then a tree over the threads): the same result every run.
__global__ void sumsq_chunks_kernel(const float* __restrict__ x, int64_t n, int64_t chunk,
                                    double* __restrict__ partial) {
  __shared__ double s[kNormThreads];
  const int64_t a = blockIdx.x * chunk, e = min(n, a + chunk);
  double acc = 0.0;
  for (int64_t i = a + threadIdx.x; i < e; i += kNormThreads) {
    const double v = x[i];
    acc += v * v;
  }
  s[threadIdx.x] = acc;
  __syncthreads();
  for (int w = kNormThreads / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) s[threadIdx.x] += s[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = s[0];
}

__global__ void sum_in_order_kernel(const double* __restrict__ partial, int64_t n,
                                    double* __restrict__ out) {
  double acc = 0.0;
  for (int64_t i = 0; i < n; ++i) acc += partial[i];
  *out = acc;
}

}  // namespace

void to_bf16(const float* x, __nv_bfloat16* y, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  to_bf16_kernel<<<detail::grid_for(n, 256), 256, 0, stream>>>(x, y, n);
  CUDA_CHECK_LAUNCH();
}

int64_t sumsq_chunks(int64_t n) { return (n + kSumsqChunk - 1) / kSumsqChunk; }

void sum_of_squares(const float* x, int64_t n, double* partial, double* out, cudaStream_t stream) {
  const int64_t chunks = sumsq_chunks(n);
  if (chunks > 0) {
    sumsq_chunks_kernel<<<static_cast<unsigned>(chunks), kNormThreads, 0, stream>>>(
        x, n, kSumsqChunk, partial);
    CUDA_CHECK_LAUNCH();
  }
  sum_in_order_kernel<<<1, 1, 0, stream>>>(partial, chunks, out);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moba::model::cuda
