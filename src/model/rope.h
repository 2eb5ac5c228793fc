// Rotary position embedding, "rotate half" convention (Llama in Hugging Face, GPT-NeoX):
// within each head, element i < D/2 pairs with i + D/2 and rotates by angle
// pos * theta^(-2i/D). Positions count from each document's start (cu_seqlens), so
// packed documents look alike to the model. Angles are computed once per model in double.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "model/parallel.h"

namespace moba::model {

// cos/sin of pos * freq_i for pos < T and i < D/2: (T, D/2) each.
struct RopeTable {
  int64_t T = 0, half = 0;
  std::vector<double> cos, sin;

  RopeTable() = default;
  RopeTable(int64_t T_, int64_t D, double theta) : T(T_), half(D / 2) {
    cos.resize(static_cast<size_t>(T * half));
    sin.resize(cos.size());
    for (int64_t p = 0; p < T; ++p)
      for (int64_t i = 0; i < half; ++i) {
        const double freq = std::pow(theta, -2.0 * static_cast<double>(i) / (2.0 * half));
        cos[p * half + i] = std::cos(static_cast<double>(p) * freq);
        sin[p * half + i] = std::sin(static_cast<double>(p) * freq);
      }
  }
};

// x (M, H, D) rotated in place; pos (M) position of each token in its document.
// inverse = true rotates by -angle: the backward of the forward rotation (dx = R^T dy).
template <typename Real>
void rope_apply(const RopeTable& rt, int64_t M, int64_t H, const int32_t* pos, Real* x,
                bool inverse) {
  const int64_t half = rt.half, D = 2 * half;
  const double sign = inverse ? -1.0 : 1.0;
#pragma omp parallel for schedule(static) if (M * H * D >= kParallelMinWork)
  for (int64_t m = 0; m < M; ++m) {
    const double* c = &rt.cos[static_cast<size_t>(pos[m]) * half];
    const double* s = &rt.sin[static_cast<size_t>(pos[m]) * half];
    for (int64_t h = 0; h < H; ++h) {
      Real* xr = x + (m * H + h) * D;
      for (int64_t i = 0; i < half; ++i) {
        const double a = xr[i], b = xr[i + half];
        xr[i] = static_cast<Real>(a * c[i] - sign * b * s[i]);
        xr[i + half] = static_cast<Real>(b * c[i] + sign * a * s[i]);
      }
    }
  }
}

}  // namespace moba::model
