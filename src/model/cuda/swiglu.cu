// SwiGLU forward and backward (swiglu.h's maths), elementwise in fp32 between bf16 loads
// and stores. Memory-bound: a grid-stride loop, one element per thread per step.
#include "core/error.h"
#include "model/cuda/common.cuh"
#include "model/cuda/layers_cuda.h"

namespace moba::model::cuda {
namespace {

constexpr int kThreads = 256;

// expf, not __expf: sigmoid(a) for a << 0 is exp(a) / (1 + exp(a)), where __expf's
// relative error grows with |a|; the cost is hidden behind memory anyway.
__device__ __forceinline__ float sigmoid(float a) { return 1.f / (1.f + expf(-a)); }

__global__ void swiglu_fwd_kernel(int64_t n, const bf16* __restrict__ a, const bf16* __restrict__ b,
                                  bf16* __restrict__ h) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float x = __bfloat162float(a[i]);
    h[i] = __float2bfloat16_rn(x * sigmoid(x) * __bfloat162float(b[i]));
  }
}

// da = dh * b * sg * (1 + a * (1 - sg)), db = dh * a * sg.
__global__ void swiglu_bwd_kernel(int64_t n, const bf16* __restrict__ a, const bf16* __restrict__ b,
                                  const bf16* __restrict__ dh, bf16* __restrict__ da,
                                  bf16* __restrict__ db) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float x = __bfloat162float(a[i]), g = __bfloat162float(dh[i]);
    const float sg = sigmoid(x);
    da[i] = __float2bfloat16_rn(g * __bfloat162float(b[i]) * sg * (1.f + x * (1.f - sg)));
    db[i] = __float2bfloat16_rn(g * x * sg);
  }
}

}  // namespace

void swiglu_forward(int64_t n, const bf16* a, const bf16* b, bf16* h, cudaStream_t stream) {
  MOBA_CHECK(n >= 0, "swiglu_forward: n = ", n, " must be >= 0");
  if (n == 0) return;
  MOBA_CHECK(a && b && h, "swiglu_forward: null pointer");
  swiglu_fwd_kernel<<<detail::grid_for(n, kThreads), kThreads, 0, stream>>>(n, a, b, h);
  CUDA_CHECK_LAUNCH();
}

void swiglu_backward(int64_t n, const bf16* a, const bf16* b, const bf16* dh, bf16* da, bf16* db,
                     cudaStream_t stream) {
  MOBA_CHECK(n >= 0, "swiglu_backward: n = ", n, " must be >= 0");
  if (n == 0) return;
  MOBA_CHECK(a && b && dh && da && db, "swiglu_backward: null pointer");
  MOBA_CHECK(da != a && da != b && db != a && db != b,
             "swiglu_backward: da/db must not alias a/b (a and b are read after the writes)");
  swiglu_bwd_kernel<<<detail::grid_for(n, kThreads), kThreads, 0, stream>>>(n, a, b, dh, da, db);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moba::model::cuda
