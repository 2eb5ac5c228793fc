// RMSNorm: y = x / rms(x) * w, rms(x) = sqrt(mean(x^2) + eps), over the last axis (C).
// Sums run in double whatever Real is. Rows are independent; the weight gradient sums
// over rows in a fixed order, so results do not depend on the thread count.
#pragma once

#include <cmath>
#include <cstdint>

#include "model/parallel.h"

namespace moba::model {

// x, y (M, C); w (C); rstd (M) keeps 1 / rms(x) for the backward.
template <typename Real>
void rmsnorm_forward(int64_t M, int64_t C, double eps, const Real* x, const Real* w, Real* y,
                     Real* rstd) {
#pragma omp parallel for schedule(static) if (M * C >= kParallelMinWork)
  for (int64_t m = 0; m < M; ++m) {
    const Real* xr = x + m * C;
    double ss = 0.0;
    for (int64_t c = 0; c < C; ++c) ss += static_cast<double>(xr[c]) * xr[c];
    const double r = 1.0 / std::sqrt(ss / static_cast<double>(C) + eps);
    rstd[m] = static_cast<Real>(r);
    for (int64_t c = 0; c < C; ++c) y[m * C + c] = static_cast<Real>(xr[c] * r * w[c]);
  }
}

// dx (M, C) = d/dx of sum(y * dy), overwritten or (accumulate_dx) added to; dw (C) +=.
// With n = x * r: dx = r * (dn - n * mean(dn * n)), dn = dy * w.
template <typename Real>
void rmsnorm_backward(int64_t M, int64_t C, const Real* x, const Real* w, const Real* rstd,
                      const Real* dy, Real* dx, Real* dw, bool accumulate_dx) {
#pragma omp parallel for schedule(static) if (M * C >= kParallelMinWork)
  for (int64_t m = 0; m < M; ++m) {
    const Real* xr = x + m * C;
    const Real* dyr = dy + m * C;
    const double r = rstd[m];
    double dot = 0.0;  // sum(dn * n)
    for (int64_t c = 0; c < C; ++c) dot += static_cast<double>(dyr[c]) * w[c] * xr[c] * r;
    const double mean = dot / static_cast<double>(C);
    for (int64_t c = 0; c < C; ++c) {
      const double g = r * (static_cast<double>(dyr[c]) * w[c] - xr[c] * r * mean);
      dx[m * C + c] = static_cast<Real>(accumulate_dx ? dx[m * C + c] + g : g);
    }
  }
#pragma omp parallel for schedule(static) if (M * C >= kParallelMinWork)
  for (int64_t c = 0; c < C; ++c) {
    double acc = 0.0;
    for (int64_t m = 0; m < M; ++m)
      acc += static_cast<double>(dy[m * C + c]) * x[m * C + c] * rstd[m];
    dw[c] = static_cast<Real>(dw[c] + acc);
  }
}

}  // namespace moba::model
