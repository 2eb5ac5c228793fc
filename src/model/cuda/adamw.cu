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

__global__ void adamw_kernel(AdamWParams p, double c1, double c2, float* __restrict__ params,
                             const float* __restrict__ grads, float* __restrict__ m_state,
                             float* __restrict__ v_state, const uint8_t* __restrict__ decay,
                             bf16* __restrict__ params_bf16) {
  const double b1 = p.beta1, b2 = p.beta2;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < p.n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const double g = grads[i] * p.grad_scale;  // in float, as clip_grads scales in place
    const double m = b1 * m_state[i] + (1.0 - b1) * g;
    const double v = b2 * v_state[i] + (1.0 - b2) * g * g;
    m_state[i] = static_cast<float>(m);
    v_state[i] = static_cast<float>(v);
    double w = params[i];
    if (decay[i]) w -= p.lr * p.weight_decay * w;
    w -= p.lr * (m / c1) / (sqrt(v / c2) + p.eps);
    const float wf = static_cast<float>(w);
    params[i] = wf;
    if (params_bf16) params_bf16[i] = __float2bfloat16_rn(wf);
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
  adamw_kernel<<<detail::grid_for(p.n, kThreads), kThreads, 0, stream>>>(p, c1, c2, params, grads,
                                                                         m, v, decay, params_bf16);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moba::model::cuda
