#include "train/adamw.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace moba::train {

AdamW::AdamW(const model::ParamLayout& layout, const OptimConfig& cfg)
    : cfg_(cfg), decay_(layout.total, 0), m_(layout.total, 0.0f), v_(layout.total, 0.0f) {
  for (const model::TensorInfo& t : layout.tensors)
    if (t.decay) std::fill_n(decay_.begin() + t.offset, t.size, 1);
}

void AdamW::step(std::span<float> params, std::span<const float> grads, double lr) {
  MOBA_CHECK(params.size() == m_.size() && grads.size() == m_.size(),
             "AdamW: parameter/gradient sizes do not match the optimizer state");
  ++t_;
  const double b1 = cfg_.beta1, b2 = cfg_.beta2;
  const double c1 = 1.0 - std::pow(b1, static_cast<double>(t_));
  const double c2 = 1.0 - std::pow(b2, static_cast<double>(t_));
  const double wd = cfg_.weight_decay, eps = cfg_.eps;
  const int64_t n = static_cast<int64_t>(params.size());
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const double g = grads[i];
    const double m = b1 * m_[i] + (1.0 - b1) * g;
    const double v = b2 * v_[i] + (1.0 - b2) * g * g;
    m_[i] = static_cast<float>(m);
    v_[i] = static_cast<float>(v);
    double p = params[i];
    if (decay_[i]) p -= lr * wd * p;
    p -= lr * (m / c1) / (std::sqrt(v / c2) + eps);
    params[i] = static_cast<float>(p);
  }
}

double grad_norm(std::span<const float> grads) {
  double s = 0.0;
  for (float g : grads) s += static_cast<double>(g) * g;
  return std::sqrt(s);
}

float clip_factor(double norm, double max_norm) {
  return max_norm > 0.0 && norm > max_norm ? static_cast<float>(max_norm / (norm + 1e-6)) : 1.0f;
}

void clip_grads(std::span<float> grads, double norm, double max_norm) {
  const float scale = clip_factor(norm, max_norm);
  if (scale == 1.0f) return;
  for (float& g : grads) g *= scale;
}

}  // namespace moba::train
