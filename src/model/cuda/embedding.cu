// Token embedding: a gather forward, a scatter-add backward into the fp32 gradient.
#include "core/error.h"
#include "model/cuda/common.cuh"
#include "model/cuda/layers_cuda.h"

namespace moba::model::cuda {
namespace {

constexpr int kThreads = 256;

// One thread per output element; consecutive threads read consecutive columns of a row.
__global__ void embedding_fwd_kernel(EmbeddingParams p, const int32_t* __restrict__ tokens,
                                     const bf16* __restrict__ table, bf16* __restrict__ out) {
  const int64_t n = p.M * p.C;
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t m = k / p.C, c = k % p.C;
    const int32_t t = tokens[m];
    out[k] = (t < 0 || t >= p.V) ? __float2bfloat16_rn(NAN) : table[int64_t(t) * p.C + c];
  }
}

// fp32 atomics: rows of a repeated token land on one table row from several threads. Order
// of the additions varies between runs (see layers_cuda.h).
__global__ void embedding_bwd_kernel(EmbeddingParams p, const int32_t* __restrict__ tokens,
                                     const bf16* __restrict__ dout, float* dtable) {
  const int64_t n = p.M * p.C;
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t m = k / p.C, c = k % p.C;
    const int32_t t = tokens[m];
    if (t < 0 || t >= p.V) continue;
    atomicAdd(dtable + int64_t(t) * p.C + c, __bfloat162float(dout[k]));
  }
}

// Vector paths (C a multiple of 8, the bf16 pointers 16-byte aligned, and for the backward
// dtable too): 8 columns per thread. The forward copies 16 bytes as they are (the same bits
// as the scalar gather); the backward adds them with two float4 atomics (per-element
// atomic, sm_90+) instead of eight float ones.
__global__ void embedding_fwd_vec_kernel(EmbeddingParams p, const int32_t* __restrict__ tokens,
                                         const bf16* __restrict__ table, bf16* __restrict__ out) {
  const int64_t C8 = p.C / 8, n8 = p.M * C8;
  const uint4* tv = reinterpret_cast<const uint4*>(table);
  uint4* ov = reinterpret_cast<uint4*>(out);
  const uint32_t nan2 = detail::pack2(NAN, NAN);
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n8;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t m = k / C8, c8 = k % C8;
    const int32_t t = tokens[m];
    ov[k] = (t < 0 || t >= p.V) ? make_uint4(nan2, nan2, nan2, nan2) : tv[int64_t(t) * C8 + c8];
  }
}

__global__ void embedding_bwd_vec_kernel(EmbeddingParams p, const int32_t* __restrict__ tokens,
                                         const bf16* __restrict__ dout, float* dtable) {
  const int64_t C8 = p.C / 8, n8 = p.M * C8;
  const uint4* dv = reinterpret_cast<const uint4*>(dout);
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n8;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t m = k / C8, c8 = k % C8;
    const int32_t t = tokens[m];
    if (t < 0 || t >= p.V) continue;
    float g[8];
    detail::unpack8(dv[k], g);
    float* row = dtable + int64_t(t) * p.C + c8 * 8;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    atomicAdd(reinterpret_cast<float4*>(row), make_float4(g[0], g[1], g[2], g[3]));
    atomicAdd(reinterpret_cast<float4*>(row + 4), make_float4(g[4], g[5], g[6], g[7]));
#else
#pragma unroll
    for (int e = 0; e < 8; ++e) atomicAdd(row + e, g[e]);
#endif
  }
}

template <typename Out>
using EmbeddingKernel = void (*)(EmbeddingParams, const int32_t*, const bf16*, Out*);

// The forward's and the backward's launch: the same checks, then the vector kernel when C and
// both data pointers allow it, else the scalar one. in: the table (forward) or the output's
// gradient (backward); out: the output or the table's gradient.
template <typename Out>
void launch(const char* what, EmbeddingKernel<Out> vec, EmbeddingKernel<Out> scalar,
            const EmbeddingParams& p, const int32_t* tokens, const bf16* in, Out* out,
            cudaStream_t stream) {
  MOBA_CHECK(p.M >= 0 && p.V >= 1 && p.C >= 1, "embedding: need M >= 0, V >= 1, C >= 1, got M = ",
             p.M, ", V = ", p.V, ", C = ", p.C);
  if (p.M == 0) return;
  MOBA_CHECK(tokens && in && out, what, ": null pointer");
  if (p.C % 8 == 0 && detail::aligned16(in) && detail::aligned16(out))
    vec<<<detail::grid_for(p.M * p.C / 8, kThreads), kThreads, 0, stream>>>(p, tokens, in, out);
  else
    scalar<<<detail::grid_for(p.M * p.C, kThreads), kThreads, 0, stream>>>(p, tokens, in, out);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void embedding_forward(const EmbeddingParams& p, const int32_t* tokens, const bf16* table, bf16* out,
                       cudaStream_t stream) {
  launch<bf16>("embedding_forward", embedding_fwd_vec_kernel, embedding_fwd_kernel, p, tokens,
               table, out, stream);
}

void embedding_backward(const EmbeddingParams& p, const int32_t* tokens, const bf16* dout,
                        float* dtable, cudaStream_t stream) {
  launch<float>("embedding_backward", embedding_bwd_vec_kernel, embedding_bwd_kernel, p, tokens,
                dout, dtable, stream);
}

}  // namespace moba::model::cuda
