// SwiGLU forward and backward (swiglu.h's maths), elementwise in fp32 between bf16 loads
// and stores. Memory-bound: a grid-stride loop, 8 elements per thread per step through
// 16-byte accesses when every pointer is 16-byte aligned, else one element (same bits).
#include "core/error.h"
#include "model/cuda/common.cuh"
#include "model/cuda/layers_cuda.h"

namespace moba::model::cuda {
namespace {

constexpr int kThreads = 256;

// expf, not __expf: sigmoid(a) for a << 0 is exp(a) / (1 + exp(a)), where __expf's
// relative error grows with |a|; the cost is hidden behind memory anyway.
__device__ __forceinline__ float sigmoid(float a) { return 1.f / (1.f + expf(-a)); }

// The per-element maths, shared by the scalar and the vector kernels (same bits).
__device__ __forceinline__ float swiglu_h(float x, float bv) { return x * sigmoid(x) * bv; }
__device__ __forceinline__ void swiglu_d(float x, float bv, float g, float& da, float& db) {
  const float sg = sigmoid(x);
  da = g * bv * sg * __fmaf_rn(x, 1.f - sg, 1.f);  // the fma the compiler chose before
  db = g * x * sg;
}

__global__ void swiglu_fwd_kernel(int64_t n, const bf16* __restrict__ a, const bf16* __restrict__ b,
                                  bf16* __restrict__ h) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    h[i] = __float2bfloat16_rn(swiglu_h(__bfloat162float(a[i]), __bfloat162float(b[i])));
}

// da = dh * b * sg * (1 + a * (1 - sg)), db = dh * a * sg.
__global__ void swiglu_bwd_kernel(int64_t n, const bf16* __restrict__ a, const bf16* __restrict__ b,
                                  const bf16* __restrict__ dh, bf16* __restrict__ da,
                                  bf16* __restrict__ db) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    float ga, gb;
    swiglu_d(__bfloat162float(a[i]), __bfloat162float(b[i]), __bfloat162float(dh[i]), ga, gb);
    da[i] = __float2bfloat16_rn(ga);
    db[i] = __float2bfloat16_rn(gb);
  }
}

// Vector paths (every pointer 16-byte aligned): 8 elements per thread per step through
// uint4 loads and stores over the first n8 = n / 8 vectors; the last n % 8 elements go
// one per thread, as in the scalar kernels.
__global__ void swiglu_fwd_vec_kernel(int64_t n, const bf16* __restrict__ a,
                                      const bf16* __restrict__ b, bf16* __restrict__ h) {
  const int64_t n8 = n / 8, stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const uint4* av = reinterpret_cast<const uint4*>(a);
  const uint4* bv = reinterpret_cast<const uint4*>(b);
  uint4* hv = reinterpret_cast<uint4*>(h);
  for (int64_t i = tid; i < n8; i += stride) {
    float x[8], y[8];
    detail::unpack8(av[i], x);
    detail::unpack8(bv[i], y);
#pragma unroll
    for (int e = 0; e < 8; ++e) y[e] = swiglu_h(x[e], y[e]);
    hv[i] = detail::pack8(y);
  }
  for (int64_t i = n8 * 8 + tid; i < n; i += stride)
    h[i] = __float2bfloat16_rn(swiglu_h(__bfloat162float(a[i]), __bfloat162float(b[i])));
}

__global__ void swiglu_bwd_vec_kernel(int64_t n, const bf16* __restrict__ a,
                                      const bf16* __restrict__ b, const bf16* __restrict__ dh,
                                      bf16* __restrict__ da, bf16* __restrict__ db) {
  const int64_t n8 = n / 8, stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const uint4* av = reinterpret_cast<const uint4*>(a);
  const uint4* bv = reinterpret_cast<const uint4*>(b);
  const uint4* gv = reinterpret_cast<const uint4*>(dh);
  uint4* dav = reinterpret_cast<uint4*>(da);
  uint4* dbv = reinterpret_cast<uint4*>(db);
  for (int64_t i = tid; i < n8; i += stride) {
    float x[8], y[8], g[8];
    detail::unpack8(av[i], x);
    detail::unpack8(bv[i], y);
    detail::unpack8(gv[i], g);
#pragma unroll
    for (int e = 0; e < 8; ++e) swiglu_d(x[e], y[e], g[e], x[e], y[e]);  // in place: da, db
    dav[i] = detail::pack8(x);
    dbv[i] = detail::pack8(y);
  }
  for (int64_t i = n8 * 8 + tid; i < n; i += stride) {
    float ga, gb;
    swiglu_d(__bfloat162float(a[i]), __bfloat162float(b[i]), __bfloat162float(dh[i]), ga, gb);
    da[i] = __float2bfloat16_rn(ga);
    db[i] = __float2bfloat16_rn(gb);
  }
}

}  // namespace

void swiglu_forward(int64_t n, const bf16* a, const bf16* b, bf16* h, cudaStream_t stream) {
  MOBA_CHECK(n >= 0, "swiglu_forward: n = ", n, " must be >= 0");
  if (n == 0) return;
  MOBA_CHECK(a && b && h, "swiglu_forward: null pointer");
  if (detail::aligned16(a) && detail::aligned16(b) && detail::aligned16(h))
    swiglu_fwd_vec_kernel<<<detail::grid_for((n + 7) / 8, kThreads), kThreads, 0, stream>>>(n, a, b,
                                                                                          h);
  else
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
  if (detail::aligned16(a) && detail::aligned16(b) && detail::aligned16(dh) &&
      detail::aligned16(da) && detail::aligned16(db))
    swiglu_bwd_vec_kernel<<<detail::grid_for((n + 7) / 8, kThreads), kThreads, 0, stream>>>(
        n, a, b, dh, da, db);
  else
    swiglu_bwd_kernel<<<detail::grid_for(n, kThreads), kThreads, 0, stream>>>(n, a, b, dh, da, db);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moba::model::cuda
