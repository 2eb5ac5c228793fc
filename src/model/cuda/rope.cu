// RoPE (rope.h's "rotate half" convention): element i < D/2 of a head pairs with i + D/2
// and turns by pos * theta^(-2i/D). One thread per pair, in place; the backward is the
// same rotation by -angle.
#include <vector>

#include "core/error.h"
#include "model/cuda/common.cuh"
#include "model/cuda/layers_cuda.h"
#include "model/rope.h"

namespace moba::model::cuda {
namespace {

constexpr int kThreads = 256;

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
    const float a = __bfloat162float(xr[i]), b = __bfloat162float(xr[i + half]);
    xr[i] = __float2bfloat16_rn(a * c - sign * b * s);
    xr[i + half] = __float2bfloat16_rn(b * c + sign * a * s);
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
  rope_kernel<<<detail::grid_for(pairs, kThreads), kThreads, 0, stream>>>(
      p, table.T(), table.half(), table.cos(), table.sin(), pos, x);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moba::model::cuda
