// AdamW (Loshchilov & Hutter): Adam with decoupled weight decay, bias-corrected moments.
// Weight decay applies to matrices only (attention and MLP projections, an untied LM
// head): not to norm weights, and not to the token embedding (nor so to a tied head),
// whose rows for rare tokens would otherwise shrink towards zero between their uses.
// State in float32, as the parameters; moments keep the parameters' flat layout.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "model/params.h"
#include "train/config.h"

namespace moba::train {

class AdamW {
 public:
  AdamW(const model::ParamLayout& layout, const OptimConfig& cfg);

  // One update with learning rate lr: p -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * p).
  void step(std::span<float> params, std::span<const float> grads, double lr);

  int64_t steps_done() const { return t_; }
  std::vector<float>& m() { return m_; }  // (P) first moments
  std::vector<float>& v() { return v_; }  // (P) second moments
  void set_steps_done(int64_t t) { t_ = t; }

 private:
  OptimConfig cfg_;
  std::vector<uint8_t> decay_;  // (P) 1 where weight decay applies
  std::vector<float> m_, v_;
  int64_t t_ = 0;
};

// Global L2 norm of the gradient, summed in double in a fixed order.
double grad_norm(std::span<const float> grads);
// The factor clipping multiplies the gradients by: max_norm / (norm + 1e-6) when norm exceeds
// max_norm > 0, else 1 (the GPU path applies it inside its AdamW kernel).
float clip_factor(double norm, double max_norm);
// Scales grads so that their norm is at most max_norm (no-op when max_norm is 0).
void clip_grads(std::span<float> grads, double norm, double max_norm);

}  // namespace moba::train
