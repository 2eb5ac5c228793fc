// RMSNorm forward and backward (rmsnorm.h's maths): one warp per row for the row-wise parts;
// the weight gradient is a column sum over rows, done in two deterministic passes.
#include "core/error.h"
#include "model/cuda/common.cuh"
#include "model/cuda/layers_cuda.h"

namespace moba::model::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;
// Rows per partial sum of dw: large enough that the partials (M / kChunkRows, C) stay small
// next to the activations, small enough that M = a few thousand rows still fills the GPU
// with ceil(C / 256) * M / kChunkRows blocks.
constexpr int64_t kChunkRows = 64;

// y = x * r * w, r = 1 / sqrt(mean(x^2) + eps), sum of squares in fp32.
__global__ void rmsnorm_fwd_kernel(RmsNormParams p, const bf16* __restrict__ x,
                                   const float* __restrict__ w, bf16* __restrict__ y,
                                   float* __restrict__ rstd) {
  const int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= p.M) return;
  const bf16* xr = x + row * p.C;
  float ss = 0.f;
  for (int64_t c = lane; c < p.C; c += 32) {
    const float v = __bfloat162float(xr[c]);
    ss += v * v;
  }
  ss = detail::warp_sum(ss);
  const float r = rsqrtf(ss / float(p.C) + p.eps);
  if (lane == 0) rstd[row] = r;
  for (int64_t c = lane; c < p.C; c += 32)
    y[row * p.C + c] = __float2bfloat16_rn(__bfloat162float(xr[c]) * r * w[c]);
}

// dx = r * (dy * w - x * r * mean(dy * w * x * r)).
__global__ void rmsnorm_bwd_dx_kernel(RmsNormParams p, const bf16* __restrict__ x,
                                      const float* __restrict__ w, const float* __restrict__ rstd,
                                      const bf16* __restrict__ dy, bf16* dx, bool accumulate) {
  const int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= p.M) return;
  const bf16* xr = x + row * p.C;
  const bf16* dyr = dy + row * p.C;
  const float r = rstd[row];
  float dot = 0.f;
  for (int64_t c = lane; c < p.C; c += 32)
    dot += __bfloat162float(dyr[c]) * w[c] * __bfloat162float(xr[c]);
  const float mean = detail::warp_sum(dot) * r / float(p.C);
  for (int64_t c = lane; c < p.C; c += 32) {
    float g = r * (__bfloat162float(dyr[c]) * w[c] - __bfloat162float(xr[c]) * r * mean);
    if (accumulate) g += __bfloat162float(dx[row * p.C + c]);
    dx[row * p.C + c] = __float2bfloat16_rn(g);
  }
}

// partial[chunk, c] = sum over the chunk's rows, in row order, of dy * x * r. A thread per
// column, so each row's loads are coalesced across the warp.
__global__ void rmsnorm_bwd_dw_partial_kernel(RmsNormParams p, const bf16* __restrict__ x,
                                              const float* __restrict__ rstd,
                                              const bf16* __restrict__ dy,
                                              float* __restrict__ partial) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  if (c >= p.C) return;
  const int64_t m0 = chunk * kChunkRows, m1 = min(p.M, m0 + kChunkRows);
  float acc = 0.f;
  for (int64_t m = m0; m < m1; ++m)
    acc += __bfloat162float(dy[m * p.C + c]) * __bfloat162float(x[m * p.C + c]) * rstd[m];
  partial[chunk * p.C + c] = acc;
}

// dw[c] += sum of the partials in chunk order: the same order every run.
__global__ void rmsnorm_bwd_dw_reduce_kernel(int64_t C, int64_t chunks,
                                             const float* __restrict__ partial, float* dw) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float acc = 0.f;
  for (int64_t k = 0; k < chunks; ++k) acc += partial[k * C + c];
  dw[c] += acc;
}

void check(const RmsNormParams& p) {
  MOBA_CHECK(p.M >= 0 && p.C >= 1, "rmsnorm: need M >= 0 rows and C >= 1 columns, got M = ", p.M,
             ", C = ", p.C);
  MOBA_CHECK(p.eps >= 0.f, "rmsnorm: eps must be >= 0, got ", p.eps);
  MOBA_CHECK(p.M * p.C < (int64_t{1} << 40), "rmsnorm: M * C too large");
}

}  // namespace

void rmsnorm_forward(const RmsNormParams& p, const bf16* x, const float* w, bf16* y, float* rstd,
                     cudaStream_t stream) {
  check(p);
  if (p.M == 0) return;
  MOBA_CHECK(x && w && y && rstd, "rmsnorm_forward: null pointer");
  const unsigned blocks = static_cast<unsigned>((p.M + kWarpsPerBlock - 1) / kWarpsPerBlock);
  rmsnorm_fwd_kernel<<<blocks, kWarpsPerBlock * 32, 0, stream>>>(p, x, w, y, rstd);
  CUDA_CHECK_LAUNCH();
}

size_t rmsnorm_backward_workspace(const RmsNormParams& p) {
  const int64_t chunks = (p.M + kChunkRows - 1) / kChunkRows;
  return sizeof(float) * static_cast<size_t>(chunks > 0 ? chunks : 1) * static_cast<size_t>(p.C);
}

void rmsnorm_backward(const RmsNormParams& p, const bf16* x, const float* w, const float* rstd,
                      const bf16* dy, bf16* dx, float* dw, bool accumulate_dx, void* workspace,
                      cudaStream_t stream) {
  check(p);
  if (p.M == 0) return;
  MOBA_CHECK(x && w && rstd && dy && dx && dw && workspace, "rmsnorm_backward: null pointer");
  const int64_t chunks = (p.M + kChunkRows - 1) / kChunkRows;
  MOBA_CHECK(chunks < 65536, "rmsnorm_backward: M = ", p.M, " rows exceed the ", 65535 * kChunkRows,
             " the dw reduction's grid allows");
  const unsigned blocks = static_cast<unsigned>((p.M + kWarpsPerBlock - 1) / kWarpsPerBlock);
  rmsnorm_bwd_dx_kernel<<<blocks, kWarpsPerBlock * 32, 0, stream>>>(p, x, w, rstd, dy, dx,
                                                                     accumulate_dx);
  CUDA_CHECK_LAUNCH();
  float* partial = static_cast<float*>(workspace);
  const dim3 grid(static_cast<unsigned>((p.C + 255) / 256), static_cast<unsigned>(chunks));
  rmsnorm_bwd_dw_partial_kernel<<<grid, 256, 0, stream>>>(p, x, rstd, dy, partial);
  CUDA_CHECK_LAUNCH();
  rmsnorm_bwd_dw_reduce_kernel<<<static_cast<unsigned>((p.C + 255) / 256), 256, 0, stream>>>(
      p.C, chunks, partial, dw);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moba::model::cuda
