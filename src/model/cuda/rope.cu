// RoPE (rope.h's "rotate half" convention): element i < D/2 of a head pairs with i + D/2
// and turns by pos * theta^(-2i/D). One thread per pair, in place, or 8 pairs through
// 16-byte accesses when D/2 is a multiple of 8 (same bits); the backward is the same
// rotation by -angle.
#include <vector>

#include "core/error.h"
#include "model/cuda/common.cuh"
#include "model/cuda/layers_cuda.h"
#include "model/rope.h"

namespace moba::model::cuda {
namespace {

constexpr int kThreads = 256;

// One pair's rotation, shared by the scalar and the vector kernels: ya = a c - sign b s,
// yb = b c + sign a s. Each multiply-add is spelled out (intrinsics are never contracted),
// with the roundings the compiler chose for the plain expressions before the vector path
// existed, so that both paths give those bits whatever the compiler does with the
// unrolled vector code (which product goes into the fma is otherwise its choice).
__device__ __forceinline__ void rotate(float a, float b, float c, float s, float sign, float& ya,
                                       float& yb) {
  ya = __fmaf_rn(a, c, -__fmul_rn(__fmul_rn(sign, b), s));
  yb = __fmaf_rn(__fmul_rn(sign, a), s, __fmul_rn(b, c));
}

__global__ void rope_kernel(RopeParams p, int64_t T, int64_t half, const float* __restrict__ cs,
                            const float* __restrict__ sn, const int32_t* __restrict__ pos,
                            bf16* x) {
  const int64_t pairs = p.M * p.H * half;
  const float sign = p.inverse ? -1.f : 1.f;
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < pairs;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = k % half, mh = k / half, m = mh / p.H;
    bf16* xr = x + mh * 2 * half;
    const int32_t t = pos[m];
    if (t < 0 || t >= T) {  // no table row: poison the output rather than read past the table
      xr[i] = xr[i + half] = __float2bfloat16_rn(NAN);
      continue;
    }
    const float c = cs[t * half + i], s = sn[t * half + i];
    float ya, yb;
    rotate(__bfloat162float(xr[i]), __bfloat162float(xr[i + half]), c, s, sign, ya, yb);
    xr[i] = __float2bfloat16_rn(ya);
    xr[i + half] = __float2bfloat16_rn(yb);
  }
}

// Vector path (half a multiple of 8, x and the tables 16-byte aligned): 8 pairs per thread,
// elements i..i+7 and i+half..i+half+7 of a head through two uint4 loads and stores, their
// cos/sin through float4 loads.
__global__ void rope_vec_kernel(RopeParams p, int64_t T, int64_t half, const float* __restrict__ cs,
                                const float* __restrict__ sn, const int32_t* __restrict__ pos,
                                bf16* x) {
  const int64_t half8 = half / 8, groups = p.M * p.H * half8;
  const float sign = p.inverse ? -1.f : 1.f;
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < groups;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = (k % half8) * 8, mh = k / half8, m = mh / p.H;
    uint4* lo = reinterpret_cast<uint4*>(x + mh * 2 * half + i);
    uint4* hi = reinterpret_cast<uint4*>(x + mh * 2 * half + i + half);
    const int32_t t = pos[m];
    if (t < 0 || t >= T) {
      const uint32_t nan2 = detail::pack2(NAN, NAN);
      *lo = *hi = make_uint4(nan2, nan2, nan2, nan2);
      continue;
    }
    float a[8], b[8], c[8], s[8];
    detail::unpack8(*lo, a);
    detail::unpack8(*hi, b);
    detail::load8(cs + t * half + i, c);
    detail::load8(sn + t * half + i, s);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float ae = a[e], be = b[e];
      rotate(ae, be, c[e], s[e], sign, a[e], b[e]);
    }
    *lo = detail::pack8(a);
    *hi = detail::pack8(b);
  }
}

}  // namespace

RopeTableCuda::RopeTableCuda(const model::RopeTable& table) : T_(table.T), half_(table.half) {
  MOBA_CHECK(T_ >= 1 && half_ >= 1, "RopeTableCuda: empty table (T = ", T_, ", D/2 = ", half_, ")");
  const size_t n = static_cast<size_t>(T_ * half_);
  std::vector<float> c(n), s(n);
  for (size_t i = 0; i < n; ++i) {
    c[i] = static_cast<float>(table.cos[i]);
    s[i] = static_cast<float>(table.sin[i]);
  }
  CUDA_CHECK(cudaMalloc(&cos_, n * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&sin_, n * sizeof(float)));
  CUDA_CHECK(cudaMemcpy(cos_, c.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(sin_, s.data(), n * sizeof(float), cudaMemcpyHostToDevice));
}

RopeTableCuda::~RopeTableCuda() {
  cudaFree(cos_);  // no CUDA_CHECK: a destructor must not throw
  cudaFree(sin_);
}

void rope_apply(const RopeParams& p, const RopeTableCuda& table, const int32_t* pos, bf16* x,
                cudaStream_t stream) {
  MOBA_CHECK(p.M >= 0 && p.H >= 1, "rope_apply: need M >= 0 tokens and H >= 1 heads, got M = ",
             p.M, ", H = ", p.H);
  if (p.M == 0) return;
  MOBA_CHECK(pos && x, "rope_apply: null pointer");
  const int64_t pairs = p.M * p.H * table.half();
  if (table.half() % 8 == 0 && detail::aligned16(x) && detail::aligned16(table.cos()) &&
      detail::aligned16(table.sin()))
    rope_vec_kernel<<<detail::grid_for(pairs / 8, kThreads), kThreads, 0, stream>>>(
        p, table.T(), table.half(), table.cos(), table.sin(), pos, x);
  else
    rope_kernel<<<detail::grid_for(pairs, kThreads), kThreads, 0, stream>>>(
        p, table.T(), table.half(), table.cos(), table.sin(), pos, x);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moba::model::cuda
