// SwiGLU's gate: h = silu(a) * b with silu(a) = a * sigmoid(a); a = x W_gate^T and
// b = x W_up^T are the two halves of the MLP's input projection (Llama).
#pragma once

#include <cmath>
#include <cstdint>

#include "model/parallel.h"

namespace moba::model {

// a, b, h (n): elementwise.
template <typename Real>
void swiglu_forward(int64_t n, const Real* a, const Real* b, Real* h) {
#pragma omp parallel for schedule(static) if (n >= kParallelMinWork)
  for (int64_t i = 0; i < n; ++i) {
    const double x = a[i], sg = 1.0 / (1.0 + std::exp(-x));
    h[i] = static_cast<Real>(x * sg * b[i]);
  }
}

// da = dh * b * silu'(a), silu'(a) = sg * (1 + a * (1 - sg)); db = dh * silu(a).
template <typename Real>
void swiglu_backward(int64_t n, const Real* a, const Real* b, const Real* dh, Real* da, Real* db) {
#pragma omp parallel for schedule(static) if (n >= kParallelMinWork)
  for (int64_t i = 0; i < n; ++i) {
    const double x = a[i], sg = 1.0 / (1.0 + std::exp(-x));
    da[i] = static_cast<Real>(dh[i] * b[i] * sg * (1.0 + x * (1.0 - sg)));
    db[i] = static_cast<Real>(dh[i] * x * sg);
  }
}

}  // namespace moba::model
