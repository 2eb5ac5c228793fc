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

void check(const EmbeddingParams& p) {
  MOBA_CHECK(p.M >= 0 && p.V >= 1 && p.C >= 1, "embedding: need M >= 0, V >= 1, C >= 1, got M = ",
             p.M, ", V = ", p.V, ", C = ", p.C);
}

}  // namespace

void embedding_forward(const EmbeddingParams& p, const int32_t* tokens, const bf16* table, bf16* out,
                       cudaStream_t stream) {
  check(p);
  if (p.M == 0) return;
  MOBA_CHECK(tokens && table && out, "embedding_forward: null pointer");
  embedding_fwd_kernel<<<detail::grid_for(p.M * p.C, kThreads), kThreads, 0, stream>>>(p, tokens,
                                                                                       table, out);
  CUDA_CHECK_LAUNCH();
}

void embedding_backward(const EmbeddingParams& p, const int32_t* tokens, const bf16* dout,
                        float* dtable, cudaStream_t stream) {
  check(p);
  if (p.M == 0) return;
  MOBA_CHECK(tokens && dout && dtable, "embedding_backward: null pointer");
  embedding_bwd_kernel<<<detail::grid_for(p.M * p.C, kThreads), kThreads, 0, stream>>>(
      p, tokens, dout, dtable);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moba::model::cuda
