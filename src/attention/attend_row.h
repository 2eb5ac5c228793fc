// The arithmetic every CPU attention row shares: one query row against a short list of key
// ranges [begin, end), scores and sums in double whatever Real is. attention_cpu.cpp's
// forward (rows on the packed token axis) and decode.cpp (rows of a KV cache) both call it,
// so that a decode step reproduces the full-sequence reference's row exactly.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace moba::attn::detail {

template <typename Real>
double dot(const Real* a, const Real* b, int64_t D) {
  double acc = 0.0;
  for (int64_t d = 0; d < D; ++d) acc += static_cast<double>(a[d]) * static_cast<double>(b[d]);
  return acc;
}

// Softmax attention of query row qr (D) over the keys of `ranges` (each with begin and end,
// in the order given): key_row(j) and value_row(j) point at key j's D values. Writes out
// (D) and returns the natural log-sum-exp of the scaled scores. `s` and `acc` are scratch,
// kept by the caller so that a row allocates nothing.
template <typename Real, typename Ranges, typename KeyRow, typename ValueRow>
double attend_row(const Real* qr, int64_t D, double scale, const Ranges& ranges, KeyRow key_row,
                  ValueRow value_row, std::vector<double>& s, std::vector<double>& acc,
                  Real* out) {
  s.clear();
  double m = -std::numeric_limits<double>::infinity();
  for (const auto& r : ranges)
    for (int64_t j = r.begin; j < r.end; ++j) {
      s.push_back(scale * dot(qr, key_row(j), D));
      m = std::max(m, s.back());
    }
  acc.assign(static_cast<size_t>(D), 0.0);
  double l = 0.0;
  size_t i = 0;
  for (const auto& r : ranges)
    for (int64_t j = r.begin; j < r.end; ++j, ++i) {
      const double p = std::exp(s[i] - m);
      l += p;
      const Real* vr = value_row(j);
      for (int64_t d = 0; d < D; ++d) acc[d] += p * static_cast<double>(vr[d]);
    }
  for (int64_t d = 0; d < D; ++d) out[d] = static_cast<Real>(acc[d] / l);
  return m + std::log(l);
}

}  // namespace moba::attn::detail
