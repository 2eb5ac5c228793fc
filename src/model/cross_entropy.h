// Softmax cross-entropy of the LM head's logits against the next tokens, in nats.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "model/parallel.h"

namespace moba::model {

// logits (M, V); targets (M) in [0, V); losses (M) = logsumexp(row) - row[target].
// The logits are overwritten with the softmax probabilities, all the backward needs.
template <typename Real>
void cross_entropy_forward(int64_t M, int64_t V, Real* logits, const int32_t* targets,
                           Real* losses) {
#pragma omp parallel for schedule(static) if (M * V >= kParallelMinWork)
  for (int64_t m = 0; m < M; ++m) {
    Real* z = logits + m * V;
    double mx = -std::numeric_limits<double>::infinity();
    for (int64_t v = 0; v < V; ++v) mx = std::max(mx, static_cast<double>(z[v]));
    double sum = 0.0;
    for (int64_t v = 0; v < V; ++v) sum += std::exp(z[v] - mx);
    const double lse = mx + std::log(sum);
    losses[m] = static_cast<Real>(lse - z[targets[m]]);
    for (int64_t v = 0; v < V; ++v) z[v] = static_cast<Real>(std::exp(z[v] - lse));
  }
}

// dlogits (M, V) = scale * (softmax - onehot(target)), in place over the probabilities.
// mask (M) or nullptr: rows with mask 0 are not in the loss, their dlogits are 0.
template <typename Real>
void cross_entropy_backward(int64_t M, int64_t V, Real* probs, const int32_t* targets,
                            double scale, const uint8_t* mask = nullptr) {
#pragma omp parallel for schedule(static) if (M * V >= kParallelMinWork)
  for (int64_t m = 0; m < M; ++m) {
    Real* p = probs + m * V;
    if (mask && !mask[m]) {
      std::fill(p, p + V, Real(0));
      continue;
    }
    for (int64_t v = 0; v < V; ++v) p[v] = static_cast<Real>(p[v] * scale);
    p[targets[m]] = static_cast<Real>(p[targets[m]] - scale);
  }
}

}  // namespace moba::model
