// An independent oracle for attention tests: builds the explicit (N x N) token mask of a
// selection, then runs masked softmax attention and its backward as whole matrices in
// double. It shares no code with src/attention beyond the Layout and Selection types.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "attention/gate.h"
#include "attention/layout.h"

namespace moba::test {

// mask[h][i * N + j]: may query token i (head h) attend to key token j?
// selection == nullptr means dense causal attention.
inline std::vector<std::vector<char>> token_mask(const attn::Layout& l, int64_t S,
                                                 const attn::Selection* sel) {
  const int64_t N = l.tokens();
  std::vector<std::vector<char>> mask(l.num_q_heads, std::vector<char>(N * N, 0));
  for (int64_t b = 0; b < l.batch(); ++b) {
    const int64_t s0 = l.seq_begin(b), len = l.seq_len(b);
    for (int64_t h = 0; h < l.num_q_heads; ++h)
      for (int64_t i = 0; i < len; ++i)
        for (int64_t j = 0; j <= i; ++j) {
          bool ok = true;
          if (sel) {
            ok = false;
            for (int32_t blk : sel->at(s0 + i, h)) ok = ok || blk == j / S;
          }
          mask[h][(s0 + i) * N + s0 + j] = ok;
        }
  }
  return mask;
}

struct BruteForce {
  std::vector<double> out, lse, dq, dk, dv;
};

// Forward and backward of masked attention; dout may be empty (no backward).
inline BruteForce brute_force(const attn::Layout& l, double scale,
                              const std::vector<std::vector<char>>& mask,
                              const std::vector<double>& q, const std::vector<double>& k,
                              const std::vector<double>& v, const std::vector<double>& dout) {
  const int64_t N = l.tokens(), Hq = l.num_q_heads, Hkv = l.num_kv_heads, D = l.head_dim;
  BruteForce r{std::vector<double>(q.size()), std::vector<double>(N * Hq),
               std::vector<double>(q.size()), std::vector<double>(k.size()),
               std::vector<double>(v.size())};
  auto Q = [&](int64_t i, int64_t h, int64_t d) { return q[(i * Hq + h) * D + d]; };
  auto Kx = [&](int64_t j, int64_t h, int64_t d) { return k[(j * Hkv + h) * D + d]; };
  auto V = [&](int64_t j, int64_t h, int64_t d) { return v[(j * Hkv + h) * D + d]; };
  for (int64_t h = 0; h < Hq; ++h) {
    const int64_t g = h / (Hq / Hkv);
    std::vector<double> P(N * N, 0.0);  // softmax probabilities, 0 where masked
    for (int64_t i = 0; i < N; ++i) {
      double m = -std::numeric_limits<double>::infinity();
      std::vector<double> s(N, 0.0);
      for (int64_t j = 0; j < N; ++j) {
        if (!mask[h][i * N + j]) continue;
        for (int64_t d = 0; d < D; ++d) s[j] += Q(i, h, d) * Kx(j, g, d);
        s[j] *= scale;
        m = std::max(m, s[j]);
      }
      double sum = 0.0;
      for (int64_t j = 0; j < N; ++j)
        if (mask[h][i * N + j]) sum += std::exp(s[j] - m);
      for (int64_t j = 0; j < N; ++j)
        if (mask[h][i * N + j]) P[i * N + j] = std::exp(s[j] - m) / sum;
      r.lse[i * Hq + h] = m + std::log(sum);
      for (int64_t d = 0; d < D; ++d) {
        double o = 0.0;
        for (int64_t j = 0; j < N; ++j) o += P[i * N + j] * V(j, g, d);
        r.out[(i * Hq + h) * D + d] = o;
      }
    }
    if (dout.empty()) continue;
    // dP = dO V^T; dS = P o (dP - rowsum(P o dP)); dQ = scale dS K; dK = scale dS^T Q; dV = P^T dO
    for (int64_t i = 0; i < N; ++i) {
      std::vector<double> dP(N, 0.0);
      double rowsum = 0.0;
      for (int64_t j = 0; j < N; ++j) {
        for (int64_t d = 0; d < D; ++d) dP[j] += dout[(i * Hq + h) * D + d] * V(j, g, d);
        rowsum += P[i * N + j] * dP[j];
      }
      for (int64_t j = 0; j < N; ++j) {
        const double dS = P[i * N + j] * (dP[j] - rowsum);
        for (int64_t d = 0; d < D; ++d) {
          r.dq[(i * Hq + h) * D + d] += scale * dS * Kx(j, g, d);
          r.dk[(j * Hkv + g) * D + d] += scale * dS * Q(i, h, d);
          r.dv[(j * Hkv + g) * D + d] += P[i * N + j] * dout[(i * Hq + h) * D + d];
        }
      }
    }
  }
  return r;
}

// max |a - b| / max(1, max |b|): an error bound that reads the same across magnitudes.
template <typename A, typename B>
double max_rel_err(const std::vector<A>& a, const std::vector<B>& b) {
  double err = 0.0, ref = 1.0;
  for (size_t i = 0; i < a.size(); ++i) {
    err = std::max(err, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
    ref = std::max(ref, std::abs(static_cast<double>(b[i])));
  }
  return a.size() == b.size() ? err / ref : std::numeric_limits<double>::infinity();
}

}  // namespace moba::test
