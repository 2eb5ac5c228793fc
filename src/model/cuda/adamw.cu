// AdamW step on the device (train/adamw.cpp's maths, element for element, in double), fused
// with gradient clipping's scale and the bf16 copy of the weights that the forward reads.
// Memory-bound (28 bytes per parameter in, 14 out): double arithmetic costs nothing here and
// keeps the update equal to the CPU's.
#include <cmath>

#include "core/error.h"
#include "model/cuda/common.cuh"
#include "model/cuda/layers_cuda.h"

namespace moba::model::cuda {
namespace {

constexpr int kThreads = 256;

// One parameter's update, shared by the scalar and the vector kernels. The multiply-adds
// are spelled out with intrinsics (never contracted), with the roundings the compiler
// chose for the plain expressions before the vector path existed:
//   m = b1 * m + (1 - b1) * g        as fma(m, b1, (1 - b1) * g)
//   v = b2 * v + (1 - b2) * g * g    as fma(v, b2, ((1 - b2) * g) * g)
//   w -= lr * wd * w                 as fma(-(lr * wd), w, w)
// so both paths give those bits whatever the compiler does with the unrolled vector code.
__device__ __forceinline__ void adamw_update(const AdamWParams& p, double c1, double c2, float gi,
                                             float& mi, float& vi, bool decay, float& wi) {
  const double b1 = p.beta1, b2 = p.beta2;
  const double g = __fmul_rn(gi, p.grad_scale);  // in float, as clip_grads scales in place
  const double m = __fma_rn(static_cast<double>(mi), b1, __dmul_rn(1.0 - b1, g));
  const double v = __fma_rn(static_cast<double>(vi), b2, __dmul_rn(__dmul_rn(1.0 - b2, g), g));
  mi = static_cast<float>(m);
  vi = static_cast<float>(v);
  double w = wi;
  if (decay) w = __fma_rn(-__dmul_rn(p.lr, p.weight_decay), w, w);
  w -= __dmul_rn(p.lr, m / c1) / (sqrt(v / c2) + p.eps);
  wi = static_cast<float>(w);
}

// Parameter i through scalar accesses: the scalar kernel's every element, the vector
// kernel's last n % 4.
__device__ __forceinline__ void adamw_element(const AdamWParams& p, double c1, double c2, int64_t i,
                                              float* __restrict__ params,
                                              const float* __restrict__ grads,
                                              float* __restrict__ m_state,
                                              float* __restrict__ v_state,
                                              const uint8_t* __restrict__ decay,
                                              bf16* __restrict__ params_bf16) {
  float mi = m_state[i], vi = v_state[i], wi = params[i];
  adamw_update(p, c1, c2, grads[i], mi, vi, decay[i] != 0, wi);
  m_state[i] = mi;
  v_state[i] = vi;
  params[i] = wi;
  if (params_bf16) params_bf16[i] = __float2bfloat16_rn(wi);
}

__global__ void adamw_kernel(AdamWParams p, double c1, double c2, float* __restrict__ params,
                             const float* __restrict__ grads, float* __restrict__ m_state,
                             float* __restrict__ v_state, const uint8_t* __restrict__ decay,
                             bf16* __restrict__ params_bf16) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < p.n;
       i += int64_t(gridDim.x) * blockDim.x) {
    adamw_element(p, c1, c2, i, params, grads, m_state, v_state, decay, params_bf16);
  }
}

// Vector path (params, grads, m, v 16-byte aligned, decay 4-byte, params_bf16 8-byte): 4
// parameters per thread per step through float4, 4-byte (decay) and 8-byte (bf16 copy)
// accesses over the first n / 4; the last n % 4 one per thread, as the scalar kernel.
__global__ void adamw_vec_kernel(AdamWParams p, double c1, double c2, float* __restrict__ params,
                                 const float* __restrict__ grads, float* __restrict__ m_state,
                                 float* __restrict__ v_state, const uint8_t* __restrict__ decay,
                                 bf16* __restrict__ params_bf16) {
  const int64_t n4 = p.n / 4, stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t i = tid; i < n4; i += stride) {
    const float4 g = reinterpret_cast<const float4*>(grads)[i];
    float4 m = reinterpret_cast<const float4*>(m_state)[i];
    float4 v = reinterpret_cast<const float4*>(v_state)[i];
    float4 w = reinterpret_cast<const float4*>(params)[i];
    const uint32_t d = reinterpret_cast<const uint32_t*>(decay)[i];  // byte e = element e
    adamw_update(p, c1, c2, g.x, m.x, v.x, (d & 0xffu) != 0, w.x);
    adamw_update(p, c1, c2, g.y, m.y, v.y, (d & 0xff00u) != 0, w.y);
    adamw_update(p, c1, c2, g.z, m.z, v.z, (d & 0xff0000u) != 0, w.z);
    adamw_update(p, c1, c2, g.w, m.w, v.w, (d & 0xff000000u) != 0, w.w);
    reinterpret_cast<float4*>(m_state)[i] = m;
    reinterpret_cast<float4*>(v_state)[i] = v;
    reinterpret_cast<float4*>(params)[i] = w;
    if (params_bf16)
      reinterpret_cast<uint2*>(params_bf16)[i] = make_uint2(detail::pack2(w.x, w.y),
                                                            detail::pack2(w.z, w.w));
  }
  for (int64_t i = n4 * 4 + tid; i < p.n; i += stride) {
    adamw_element(p, c1, c2, i, params, grads, m_state, v_state, decay, params_bf16);
  }
}

}  // namespace

void adamw_step(const AdamWParams& p, float* params, const float* grads, float* m, float* v,
                const uint8_t* decay, bf16* params_bf16, cudaStream_t stream) {
  MOBA_CHECK(p.n >= 0, "adamw_step: n = ", p.n, " must be >= 0");
  MOBA_CHECK(p.t >= 1, "adamw_step: step t = ", p.t, " must be >= 1 (bias correction)");
  MOBA_CHECK(p.beta1 >= 0 && p.beta1 < 1 && p.beta2 >= 0 && p.beta2 < 1,
             "adamw_step: betas must be in [0, 1), got ", p.beta1, ", ", p.beta2);
  if (p.n == 0) return;
  MOBA_CHECK(params && grads && m && v && decay, "adamw_step: null pointer");
  // Bias corrections once on the host, with the CPU's std::pow.
  const double c1 = 1.0 - std::pow(p.beta1, static_cast<double>(p.t));
  const double c2 = 1.0 - std::pow(p.beta2, static_cast<double>(p.t));
  const auto aligned = [](const void* q, uintptr_t a) {
    return reinterpret_cast<uintptr_t>(q) % a == 0;
  };
  if (aligned(params, 16) && aligned(grads, 16) && aligned(m, 16) && aligned(v, 16) &&
      aligned(decay, 4) && aligned(params_bf16, 8))  // (nullptr is aligned)
    adamw_vec_kernel<<<detail::grid_for((p.n + 3) / 4, kThreads), kThreads, 0, stream>>>(
        p, c1, c2, params, grads, m, v, decay, params_bf16);
  else
    adamw_kernel<<<detail::grid_for(p.n, kThreads), kThreads, 0, stream>>>(
        p, c1, c2, params, grads, m, v, decay, params_bf16);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moba::model::cuda
