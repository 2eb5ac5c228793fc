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

// ---- Rows of the fused gate/up projection: ab (M, 2F), each row [a | b] ----------------
// Element (m, j) of a is ab[m 2F + j], of b ab[m 2F + F + j]; h, dh (M, F) contiguous;
// dab (M, 2F) as ab. The per-element maths is the kernels' above (same bits). Idx: 32-bit
// index arithmetic when every index fits (cheaper divisions), else 64-bit.
template <typename Idx>
__global__ void swiglu_fwd_rows_kernel(int64_t M, int64_t F_, const bf16* __restrict__ ab,
                                       bf16* __restrict__ h) {
  const Idx F = static_cast<Idx>(F_), n = static_cast<Idx>(M) * F;
  for (Idx i = Idx(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += Idx(gridDim.x) * blockDim.x) {
    const Idx m = i / F, j = i - m * F;
    const bf16* r = ab + m * 2 * F;
    h[i] = __float2bfloat16_rn(swiglu_h(__bfloat162float(r[j]), __bfloat162float(r[F + j])));
  }
}

template <typename Idx>
__global__ void swiglu_bwd_rows_kernel(int64_t M, int64_t F_, const bf16* __restrict__ ab,
                                       const bf16* __restrict__ dh, bf16* __restrict__ dab) {
  const Idx F = static_cast<Idx>(F_), n = static_cast<Idx>(M) * F;
  for (Idx i = Idx(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += Idx(gridDim.x) * blockDim.x) {
    const Idx m = i / F, j = i - m * F;
    const bf16* r = ab + m * 2 * F;
    bf16* d = dab + m * 2 * F;
    float ga, gb;
    swiglu_d(__bfloat162float(r[j]), __bfloat162float(r[F + j]), __bfloat162float(dh[i]), ga, gb);
    d[j] = __float2bfloat16_rn(ga);
    d[F + j] = __float2bfloat16_rn(gb);
  }
}

// Vector paths: F a multiple of 8 and every pointer 16-byte aligned (so are the rows),
// 8 elements per thread per step; F8 = F / 8 vectors a row of h.
template <typename Idx>
__global__ void swiglu_fwd_rows_vec_kernel(int64_t M, int64_t F8_, const bf16* __restrict__ ab,
                                           bf16* __restrict__ h) {
  const Idx F8 = static_cast<Idx>(F8_), n8 = static_cast<Idx>(M) * F8;
  const uint4* abv = reinterpret_cast<const uint4*>(ab);
  uint4* hv = reinterpret_cast<uint4*>(h);
  for (Idx i = Idx(blockIdx.x) * blockDim.x + threadIdx.x; i < n8;
       i += Idx(gridDim.x) * blockDim.x) {
    const Idx m = i / F8, j = i - m * F8;
    float x[8], y[8];
    detail::unpack8(abv[m * 2 * F8 + j], x);
    detail::unpack8(abv[m * 2 * F8 + F8 + j], y);
#pragma unroll
    for (int e = 0; e < 8; ++e) y[e] = swiglu_h(x[e], y[e]);
    hv[i] = detail::pack8(y);
  }
}

template <typename Idx>
__global__ void swiglu_bwd_rows_vec_kernel(int64_t M, int64_t F8_, const bf16* __restrict__ ab,
                                           const bf16* __restrict__ dh, bf16* __restrict__ dab) {
  const Idx F8 = static_cast<Idx>(F8_), n8 = static_cast<Idx>(M) * F8;
  const uint4* abv = reinterpret_cast<const uint4*>(ab);
  const uint4* gv = reinterpret_cast<const uint4*>(dh);
  uint4* dv = reinterpret_cast<uint4*>(dab);
  for (Idx i = Idx(blockIdx.x) * blockDim.x + threadIdx.x; i < n8;
       i += Idx(gridDim.x) * blockDim.x) {
    const Idx m = i / F8, j = i - m * F8, ra = m * 2 * F8 + j;
    float x[8], y[8], g[8];
    detail::unpack8(abv[ra], x);
    detail::unpack8(abv[ra + F8], y);
    detail::unpack8(gv[i], g);
#pragma unroll
    for (int e = 0; e < 8; ++e) swiglu_d(x[e], y[e], g[e], x[e], y[e]);  // in place: da, db
    dv[ra] = detail::pack8(x);
    dv[ra + F8] = detail::pack8(y);
  }
}

void check_rows(const char* what, int64_t M, int64_t F) {
  MOBA_CHECK(M >= 0 && F >= 1, what, ": need M >= 0 rows and F >= 1, got M = ", M, ", F = ", F);
  MOBA_CHECK(M * F < (int64_t{1} << 60), what, ": M * F too large");
}

bool overlap(const bf16* a, int64_t na, const bf16* b, int64_t nb) {
  return a < b + nb && b < a + na;
}

// Every index (elements of ab, plus a grid stride) fits in 32 bits.
bool fits32(int64_t M, int64_t F) { return 2 * M * F < (int64_t{1} << 31); }

}  // namespace

void swiglu_forward_rows(int64_t M, int64_t F, const bf16* ab, bf16* h, cudaStream_t stream) {
  check_rows("swiglu_forward_rows", M, F);
  if (M == 0) return;
  MOBA_CHECK(ab && h, "swiglu_forward_rows: null pointer");
  MOBA_CHECK(!overlap(ab, 2 * M * F, h, M * F), "swiglu_forward_rows: h must not overlap ab");
  const bool idx32 = fits32(M, F);
  if (F % 8 == 0 && detail::aligned16(ab) && detail::aligned16(h)) {
    const unsigned grid = detail::grid_for(M * F / 8, kThreads);
    if (idx32)
      swiglu_fwd_rows_vec_kernel<uint32_t><<<grid, kThreads, 0, stream>>>(M, F / 8, ab, h);
    else
      swiglu_fwd_rows_vec_kernel<int64_t><<<grid, kThreads, 0, stream>>>(M, F / 8, ab, h);
  } else {
    const unsigned grid = detail::grid_for(M * F, kThreads);
    if (idx32)
      swiglu_fwd_rows_kernel<uint32_t><<<grid, kThreads, 0, stream>>>(M, F, ab, h);
    else
      swiglu_fwd_rows_kernel<int64_t><<<grid, kThreads, 0, stream>>>(M, F, ab, h);
  }
  CUDA_CHECK_LAUNCH();
}

void swiglu_backward_rows(int64_t M, int64_t F, const bf16* ab, const bf16* dh, bf16* dab,
                          cudaStream_t stream) {
  check_rows("swiglu_backward_rows", M, F);
  if (M == 0) return;
  MOBA_CHECK(ab && dh && dab, "swiglu_backward_rows: null pointer");
  MOBA_CHECK(!overlap(dab, 2 * M * F, ab, 2 * M * F) && !overlap(dab, 2 * M * F, dh, M * F),
             "swiglu_backward_rows: dab must not overlap ab or dh");
  const bool idx32 = fits32(M, F);
  if (F % 8 == 0 && detail::aligned16(ab) && detail::aligned16(dh) && detail::aligned16(dab)) {
    const unsigned grid = detail::grid_for(M * F / 8, kThreads);
    if (idx32)
      swiglu_bwd_rows_vec_kernel<uint32_t><<<grid, kThreads, 0, stream>>>(M, F / 8, ab, dh, dab);
    else
      swiglu_bwd_rows_vec_kernel<int64_t><<<grid, kThreads, 0, stream>>>(M, F / 8, ab, dh, dab);
  } else {
    const unsigned grid = detail::grid_for(M * F, kThreads);
    if (idx32)
      swiglu_bwd_rows_kernel<uint32_t><<<grid, kThreads, 0, stream>>>(M, F, ab, dh, dab);
    else
      swiglu_bwd_rows_kernel<int64_t><<<grid, kThreads, 0, stream>>>(M, F, ab, dh, dab);
  }
  CUDA_CHECK_LAUNCH();
}

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
