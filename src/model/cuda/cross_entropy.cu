// Cross-entropy forward and backward over the LM head's logits (cross_entropy.h's maths).
// One block per row. The forward reads the row once, keeping a running (max, sum of
// exp(z - max)) per thread (the online softmax), then merges the threads' pairs; the
// backward reads it once more and writes dlogits from the stored lse, so the probabilities
// never go to memory. Rows go through 16-byte vector accesses when V allows (see
// ce_fwd_kernel), with the scalar sweep's results bit for bit.
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
  // s * e1 + s2 * e2 with the roundings of the pre-vector kernels (s2 * e2 rounded, then
  // one fma), spelled out so that no kernel variant contracts it otherwise.
  s = __fmaf_rn(s, __expf(m - mx), __fmul_rn(s2, __expf(m2 - mx)));
  m = mx;
}

// One element of the online softmax: (m, s) = running max and sum of exp(z - max).
__device__ __forceinline__ void online(float& m, float& s, float x) {
  if (x > m) {
    s = __fmaf_rn(s, __expf(m - x), 1.f);  // m = -inf the first time: exp(-inf) = 0
    m = x;
  } else {
    s += __expf(x - m);
  }
}

// dz = scale * (exp(z - lse) - [v == target]); 0 on masked rows.
__device__ __forceinline__ float ce_grad(float x, float l, int64_t v, int32_t t, float scale,
                                         bool off) {
  float g = 0.f;
  if (!off) g = scale * (__expf(x - l) - (v == t ? 1.f : 0.f));
  return g;
}

// The dlogits sweep over one row, scalar (any V) or through 16-byte vectors (V a multiple
// of the vector, both rows 16-byte aligned): the same ce_grad per element either way, so
// the same bits. z and dz may alias: each element is read, then written, by one thread;
// the vector sweep reads two vectors before writing them, for more loads in flight (a
// thread's own elements only, so in place stays right).
template <typename T, bool kVec>
__device__ __forceinline__ void ce_grad_sweep(int64_t V, const T* z, T* dz, float l, int32_t t,
                                              float scale, bool off) {
  if constexpr (kVec) {
    using Vec = detail::Vec16<T>;
    constexpr int kN = Vec::kN;
    const uint4* zv = reinterpret_cast<const uint4*>(z);
    uint4* dzv = reinterpret_cast<uint4*>(dz);
    const int64_t nvec = V / kN;
    int64_t i = threadIdx.x;
    for (; i + kThreads < nvec; i += 2 * kThreads) {
      float f0[kN], f1[kN];
      Vec::unpack(zv[i], f0);
      Vec::unpack(zv[i + kThreads], f1);
#pragma unroll
      for (int e = 0; e < kN; ++e) {
        f0[e] = ce_grad(f0[e], l, i * kN + e, t, scale, off);
        f1[e] = ce_grad(f1[e], l, (i + kThreads) * kN + e, t, scale, off);
      }
      dzv[i] = Vec::pack(f0);
      dzv[i + kThreads] = Vec::pack(f1);
    }
    if (i < nvec) {
      float f0[kN];
      Vec::unpack(zv[i], f0);
#pragma unroll
      for (int e = 0; e < kN; ++e) f0[e] = ce_grad(f0[e], l, i * kN + e, t, scale, off);
      dzv[i] = Vec::pack(f0);
    }
  } else {
    for (int64_t v = threadIdx.x; v < V; v += kThreads)
      dz[v] = detail::from_float<T>(ce_grad(detail::to_float(z[v]), l, v, t, scale, off));
  }
}

// kFused: also write dlogits (as ce_bwd_kernel) in a second sweep over the row, which a
// block of this row just read: it comes from L2 rather than HBM, saving one of the
// backward's two passes over the (M, V) logits. No __restrict__ on logits: dlogits may
// alias them (each element is read, then written, by one thread; z[target] is read before
// the barrier that precedes the writes).
// kVec (V a multiple of 16 bytes' elements, rows 16-byte aligned): the row comes in through
// 16-byte loads, a chunk of kThreads vectors at a time, staged in shared memory, from where
// each thread takes the very elements of the scalar sweep (v = tid, tid + kThreads, ...) in
// the same order: the same per-thread (max, sum), hence bit-identical lse and losses. The
// next chunk's load is issued before the current chunk is consumed.
template <typename T, bool kFused, bool kVec>
__global__ void __launch_bounds__(kThreads) ce_fwd_kernel(CrossEntropyParams p, const T* logits,
                                                          const int32_t* __restrict__ targets,
                                                          const uint8_t* __restrict__ mask,
                                                          float* __restrict__ losses,
                                                          float* __restrict__ lse, float scale,
                                                          T* dlogits) {
  const int64_t row = blockIdx.x;
  const T* z = logits + row * p.V;
  float m = -INFINITY, s = 0.f;
  if constexpr (kVec) {
    constexpr int kN = detail::Vec16<T>::kN;
    __shared__ uint4 stage[kThreads];
    const T* st = reinterpret_cast<const T*>(stage);
    const uint4* zv = reinterpret_cast<const uint4*>(z);
    const int64_t nvec = p.V / kN;
    uint4 next = make_uint4(0u, 0u, 0u, 0u);
    if (threadIdx.x < nvec) next = zv[threadIdx.x];
    for (int64_t b = 0; b < nvec; b += kThreads) {  // b: the chunk's first vector
      __syncthreads();                              // the previous chunk is consumed
      stage[threadIdx.x] = next;                    // past the row's end: never read
      __syncthreads();
      if (b + kThreads + threadIdx.x < nvec) next = zv[b + kThreads + threadIdx.x];
      // Element j of the chunk is the row's v = b * kN + j; this thread's j = tid + kThreads
      // * k are its scalar sweep's v = tid + kThreads * (b / kThreads * kN + k), in order.
      const int len = static_cast<int>(min(int64_t{kThreads} * kN, (nvec - b) * kN));
      for (int j = threadIdx.x; j < len; j += kThreads) online(m, s, detail::to_float(st[j]));
    }
  } else {
    for (int64_t v = threadIdx.x; v < p.V; v += kThreads) online(m, s, detail::to_float(z[v]));
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
    ce_grad_sweep<T, kVec>(p.V, z, dlogits + row * p.V, s_lse, t, scale, off);
  }
}

// dz = scale * (exp(z - lse) - [v == target]); 0 on masked rows.
template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads) ce_bwd_kernel(CrossEntropyParams p, const T* logits,
                                                          const float* __restrict__ lse,
                                                          const int32_t* __restrict__ targets,
                                                          const uint8_t* __restrict__ mask,
                                                          float scale, T* dlogits) {
  const int64_t row = blockIdx.x;
  const bool off = mask && !mask[row];
  // In place (dlogits == logits): each element is read, then written, by the same thread.
  ce_grad_sweep<T, kVec>(p.V, logits + row * p.V, dlogits + row * p.V, lse[row], targets[row],
                         scale, off);
}

// The vector path applies: V a multiple of 16 bytes' elements (8 bf16, 4 fp32), so every
// row starts 16-byte aligned, and the pointers 16-byte aligned.
bool use_vec(const CrossEntropyParams& p, const void* logits, const void* dlogits) {
  const int64_t n = p.dtype == LogitsType::kBf16 ? 8 : 4;
  return p.V % n == 0 && detail::aligned16(logits) && (!dlogits || detail::aligned16(dlogits));
}

template <typename T, bool kFused>
void launch_fwd(const CrossEntropyParams& p, const void* logits, const int32_t* targets,
                const uint8_t* mask, float* losses, float* lse, float scale, void* dlogits,
                cudaStream_t stream) {
  const unsigned grid = static_cast<unsigned>(p.M);
  const T* z = static_cast<const T*>(logits);
  T* dz = static_cast<T*>(dlogits);
  if (use_vec(p, logits, dlogits))
    ce_fwd_kernel<T, kFused, true>
        <<<grid, kThreads, 0, stream>>>(p, z, targets, mask, losses, lse, scale, dz);
  else
    ce_fwd_kernel<T, kFused, false>
        <<<grid, kThreads, 0, stream>>>(p, z, targets, mask, losses, lse, scale, dz);
}

template <typename T>
void launch_bwd(const CrossEntropyParams& p, const void* logits, const float* lse,
                const int32_t* targets, const uint8_t* mask, float scale, void* dlogits,
                cudaStream_t stream) {
  const unsigned grid = static_cast<unsigned>(p.M);
  const T* z = static_cast<const T*>(logits);
  T* dz = static_cast<T*>(dlogits);
  if (use_vec(p, logits, dlogits))
    ce_bwd_kernel<T, true><<<grid, kThreads, 0, stream>>>(p, z, lse, targets, mask, scale, dz);
  else
    ce_bwd_kernel<T, false><<<grid, kThreads, 0, stream>>>(p, z, lse, targets, mask, scale, dz);
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
  if (p.dtype == LogitsType::kBf16)
    launch_fwd<bf16, false>(p, logits, targets, mask, losses, lse, 0.f, nullptr, stream);
  else
    launch_fwd<float, false>(p, logits, targets, mask, losses, lse, 0.f, nullptr, stream);
  CUDA_CHECK_LAUNCH();
}

void cross_entropy_fused(const CrossEntropyParams& p, const void* logits, const int32_t* targets,
                         const uint8_t* mask, float scale, float* losses, float* lse,
                         void* dlogits, cudaStream_t stream) {
  check(p);
  if (p.M == 0) return;
  MOBA_CHECK(logits && targets && losses && lse && dlogits, "cross_entropy_fused: null pointer");
  if (p.dtype == LogitsType::kBf16)
    launch_fwd<bf16, true>(p, logits, targets, mask, losses, lse, scale, dlogits, stream);
  else
    launch_fwd<float, true>(p, logits, targets, mask, losses, lse, scale, dlogits, stream);
  CUDA_CHECK_LAUNCH();
}

void cross_entropy_backward(const CrossEntropyParams& p, const void* logits, const float* lse,
                            const int32_t* targets, const uint8_t* mask, float scale,
                            void* dlogits, cudaStream_t stream) {
  check(p);
  if (p.M == 0) return;
  MOBA_CHECK(logits && lse && targets && dlogits, "cross_entropy_backward: null pointer");
  if (p.dtype == LogitsType::kBf16)
    launch_bwd<bf16>(p, logits, lse, targets, mask, scale, dlogits, stream);
  else
    launch_bwd<float>(p, logits, lse, targets, mask, scale, dlogits, stream);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moba::model::cuda
