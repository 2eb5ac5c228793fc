// Cross-entropy forward and backward over the LM head's logits (cross_entropy.h's maths).
// One block per row. The forward reads the row once, keeping a running (max, sum of
// exp(z - max)) per thread (the online softmax), then merges the threads' pairs; the
// backward reads it once more and writes dlogits from the stored lse, so the probabilities
// never go to memory.
#include <cfloat>

#include "core/error.h"
#include "model/cuda/common.cuh"
#include "model/cuda/layers_cuda.h"

namespace moba::model::cuda {
namespace {

constexpr int kThreads = 512;  // 16 warps: a 32K-vocabulary row is 64 elements per thread

// Merges (m2, s2) into (m, s): sums of exp(z - max) rescaled to the larger max. A pair with
// max -inf holds no elements; it must not meet the other's max as -inf - -inf = NaN.
__device__ __forceinline__ void merge(float& m, float& s, float m2, float s2) {
  if (m2 == -INFINITY) return;
  if (m == -INFINITY) {
    m = m2;
    s = s2;
    return;
  }
  const float mx = fmaxf(m, m2);
  s = s * __expf(m - mx) + s2 * __expf(m2 - mx);
  m = mx;
}

// kFused: also write dlogits (as ce_bwd_kernel) in a second sweep over the row, which a
// block of this row just read: it comes from L2 rather than HBM, saving one of the
// backward's two passes over the (M, V) logits. No __restrict__ on logits: dlogits may
// alias them (each element is read, then written, by one thread; z[target] is read before
// the barrier that precedes the writes).
template <typename T, bool kFused>
__global__ void __launch_bounds__(kThreads) ce_fwd_kernel(CrossEntropyParams p, const T* logits,
                                                          const int32_t* __restrict__ targets,
                                                          const uint8_t* __restrict__ mask,
                                                          float* __restrict__ losses,
                                                          float* __restrict__ lse, float scale,
                                                          T* dlogits) {
  const int64_t row = blockIdx.x;
  const T* z = logits + row * p.V;
  float m = -INFINITY, s = 0.f;
  for (int64_t v = threadIdx.x; v < p.V; v += kThreads) {
    const float x = detail::to_float(z[v]);
    if (x > m) {
      s = s * __expf(m - x) + 1.f;  // m = -inf the first time: exp(-inf) = 0
      m = x;
    } else {
      s += __expf(x - m);
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    merge(m, s, m2, s2);
  }
  __shared__ float sm[kThreads / 32], ss[kThreads / 32], s_lse;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    sm[warp] = m;
    ss[warp] = s;
  }
  __syncthreads();
  const int32_t t = targets[row];
  const bool off = mask && !mask[row];
  if (threadIdx.x == 0) {
    m = sm[0];
    s = ss[0];
    for (int w = 1; w < kThreads / 32; ++w) merge(m, s, sm[w], ss[w]);
    const float log_s = logf(s);
    s_lse = lse[row] = m + log_s;
    // (max - z[t]) + log(s) rather than lse - z[t]: when the target is (near) the max, the
    // loss is small and lse - z[t] would cancel away its low digits (an ulp of lse ~ 10 is
    // 1e-6, a loss of 0.01 then has 1e-4 relative error); this way it keeps fp32 accuracy.
    if (off)
      losses[row] = 0.f;
    else if (t < 0 || t >= p.V)
      losses[row] = NAN;
    else
      losses[row] = (m - detail::to_float(z[t])) + log_s;
  }
  if constexpr (kFused) {
    __syncthreads();
    const float l = s_lse;
    T* dz = dlogits + row * p.V;
    for (int64_t v = threadIdx.x; v < p.V; v += kThreads) {
      float g = 0.f;
      if (!off) g = scale * (__expf(detail::to_float(z[v]) - l) - (v == t ? 1.f : 0.f));
      dz[v] = detail::from_float<T>(g);
    }
  }
}

// dz = scale * (exp(z - lse) - [v == target]); 0 on masked rows.
template <typename T>
__global__ void __launch_bounds__(kThreads) ce_bwd_kernel(CrossEntropyParams p, const T* logits,
                                                          const float* __restrict__ lse,
                                                          const int32_t* __restrict__ targets,
                                                          const uint8_t* __restrict__ mask,
                                                          float scale, T* dlogits) {
  const int64_t row = blockIdx.x;
  const T* z = logits + row * p.V;
  T* dz = dlogits + row * p.V;
  const bool off = mask && !mask[row];
  const float l = lse[row];
  const int32_t t = targets[row];
  // In place (dlogits == logits): each element is read, then written, by the same thread.
  for (int64_t v = threadIdx.x; v < p.V; v += kThreads) {
    float g = 0.f;
    if (!off) g = scale * (__expf(detail::to_float(z[v]) - l) - (v == t ? 1.f : 0.f));
    dz[v] = detail::from_float<T>(g);
  }
}

void check(const CrossEntropyParams& p) {
  MOBA_CHECK(p.M >= 0 && p.M < (int64_t{1} << 31), "cross_entropy: M = ", p.M,
             " rows, must be in [0, 2^31)");
  MOBA_CHECK(p.V >= 1 && p.V <= kMaxVocab, "cross_entropy: vocabulary V = ", p.V,
             " must be in [1, ", kMaxVocab, "]");
}

}  // namespace

void cross_entropy_forward(const CrossEntropyParams& p, const void* logits, const int32_t* targets,
                           const uint8_t* mask, float* losses, float* lse, cudaStream_t stream) {
  check(p);
  if (p.M == 0) return;
  MOBA_CHECK(logits && targets && losses && lse, "cross_entropy_forward: null pointer");
  const unsigned grid = static_cast<unsigned>(p.M);
  if (p.dtype == LogitsType::kBf16)
    ce_fwd_kernel<bf16, false><<<grid, kThreads, 0, stream>>>(
        p, static_cast<const bf16*>(logits), targets, mask, losses, lse, 0.f, nullptr);
  else
    ce_fwd_kernel<float, false><<<grid, kThreads, 0, stream>>>(
        p, static_cast<const float*>(logits), targets, mask, losses, lse, 0.f, nullptr);
  CUDA_CHECK_LAUNCH();
}

void cross_entropy_fused(const CrossEntropyParams& p, const void* logits, const int32_t* targets,
                         const uint8_t* mask, float scale, float* losses, float* lse,
                         void* dlogits, cudaStream_t stream) {
  check(p);
  if (p.M == 0) return;
  MOBA_CHECK(logits && targets && losses && lse && dlogits, "cross_entropy_fused: null pointer");
  const unsigned grid = static_cast<unsigned>(p.M);
  if (p.dtype == LogitsType::kBf16)
    ce_fwd_kernel<bf16, true><<<grid, kThreads, 0, stream>>>(
        p, static_cast<const bf16*>(logits), targets, mask, losses, lse, scale,
        static_cast<bf16*>(dlogits));
  else
    ce_fwd_kernel<float, true><<<grid, kThreads, 0, stream>>>(
        p, static_cast<const float*>(logits), targets, mask, losses, lse, scale,
        static_cast<float*>(dlogits));
  CUDA_CHECK_LAUNCH();
}

void cross_entropy_backward(const CrossEntropyParams& p, const void* logits, const float* lse,
                            const int32_t* targets, const uint8_t* mask, float scale,
                            void* dlogits, cudaStream_t stream) {
  check(p);
  if (p.M == 0) return;
  MOBA_CHECK(logits && lse && targets && dlogits, "cross_entropy_backward: null pointer");
  const unsigned grid = static_cast<unsigned>(p.M);
  if (p.dtype == LogitsType::kBf16)
    ce_bwd_kernel<bf16><<<grid, kThreads, 0, stream>>>(p, static_cast<const bf16*>(logits), lse,
                                                       targets, mask, scale,
                                                       static_cast<bf16*>(dlogits));
  else
    ce_bwd_kernel<float><<<grid, kThreads, 0, stream>>>(p, static_cast<const float*>(logits), lse,
                                                        targets, mask, scale,
                                                        static_cast<float*>(dlogits));
  CUDA_CHECK_LAUNCH();
}

}  // namespace moba::model::cuda
