#include "model/attention_blas.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "model/gemm.h"

namespace moba::model {
namespace {

// Query rows per tile: the score tile is R x (keys so far), so its memory stays
// R * T floats per thread whatever T is, and R = 64 keeps the products BLAS-sized.
constexpr int64_t kTileRows = 64;

struct Geometry {
  int64_t Hq, Hkv, D, group;
  int64_t ldq, ldk;  // row strides of q (Hq*D) and k, v (Hkv*D)
};

Geometry geometry(const attn::Layout& l) {
  return {l.num_q_heads,
          l.num_kv_heads,
          l.head_dim,
          l.group(),
          l.num_q_heads * l.head_dim,
          l.num_kv_heads * l.head_dim};
}

// allowed[j] for keys j < n_keys of query t (positions within the sequence) of head h:
// dense: j <= t; MoBA: j in a selected block, and j <= t in the current block.
void row_mask(const attn::Selection* sel, int64_t S, int64_t tok, int64_t h, int64_t t,
              int64_t n_keys, std::vector<uint8_t>& allowed) {
  allowed.assign(static_cast<size_t>(n_keys), 0);
  if (!sel) {
    std::fill(allowed.begin(), allowed.begin() + t + 1, 1);
    return;
  }
  for (int32_t j : sel->at(tok, h)) {
    if (j < 0) continue;
    const int64_t b0 = j * S, b1 = std::min<int64_t>(b0 + S, t + 1);
    for (int64_t key = b0; key < b1; ++key) allowed[key] = 1;
  }
}

// Softmax probabilities of one tile in place: s (rows, n) scores -> P, with lse per row.
// With `given_lse` (backward) P = exp(scale*s - lse) from the forward's lse.
template <typename Real>
void tile_softmax(const attn::Selection* sel, int64_t S, int64_t tok0, int64_t h, int64_t t0,
                  int64_t rows, int64_t n, double scale, Real* s, Real* lse_out,
                  const Real* given_lse, int64_t lse_stride, std::vector<uint8_t>& allowed) {
  for (int64_t i = 0; i < rows; ++i) {
    Real* r = s + i * n;
    row_mask(sel, S, tok0 + i, h, t0 + i, n, allowed);
    if (given_lse) {
      const double l = given_lse[i * lse_stride];
      for (int64_t j = 0; j < n; ++j)
        r[j] = allowed[j] ? static_cast<Real>(std::exp(scale * r[j] - l)) : Real(0);
      continue;
    }
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < n; ++j)
      if (allowed[j]) m = std::max(m, scale * static_cast<double>(r[j]));
    double sum = 0.0;
    for (int64_t j = 0; j < n; ++j) {
      const double p = allowed[j] ? std::exp(scale * r[j] - m) : 0.0;
      r[j] = static_cast<Real>(p);
      sum += p;
    }
    for (int64_t j = 0; j < n; ++j) r[j] = static_cast<Real>(r[j] / sum);
    lse_out[i * lse_stride] = static_cast<Real>(m + std::log(sum));
  }
}

// Runs task(scratch, base, n, kvh, kv) for each of the B * Hkv (sequence, kv head) pairs,
// spread over the OpenMP threads: the sequence's rows [base, base + n), kv head kvh, whose
// columns of K and V start at offset kv. Each thread has one Scratch, reused by its tasks;
// tasks write disjoint parts of the outputs.
template <typename Scratch, typename Task>
void for_each_kv_task(const attn::Layout& layout, const Geometry& g, Task&& task) {
  const int64_t work = layout.batch() * g.Hkv;
#pragma omp parallel
  {
    Scratch scratch;
#pragma omp for schedule(dynamic, 1)
    for (int64_t w = 0; w < work; ++w) {
      const int64_t b = w / g.Hkv, kvh = w % g.Hkv, base = layout.seq_begin(b);
      task(scratch, base, layout.seq_len(b), kvh, base * g.ldk + kvh * g.D);
    }
  }
}

}  // namespace

template <typename Real>
void attention_blas_forward(const attn::Layout& layout, const attn::Selection* sel,
                            int64_t block_size, double scale, const Real* q, const Real* k,
                            const Real* v, Real* out, Real* lse) {
  struct Scratch {
    std::vector<Real> s;  // (R, keys) scores, then probabilities
    std::vector<uint8_t> allowed;
  };
  const Geometry g = geometry(layout);
  for_each_kv_task<Scratch>(layout, g, [&](Scratch& scratch, int64_t base, int64_t n, int64_t kvh,
                                           int64_t kv) {
    auto& [s, allowed] = scratch;
    const Real* kb = k + kv;
    const Real* vb = v + kv;
    for (int64_t h = kvh * g.group; h < (kvh + 1) * g.group; ++h)
      for (int64_t r0 = 0; r0 < n; r0 += kTileRows) {
        const int64_t rows = std::min(kTileRows, n - r0), keys = r0 + rows;
        s.resize(static_cast<size_t>(rows * keys));
        const Real* qt = q + (base + r0) * g.ldq + h * g.D;
        // S (rows, keys) = Q_tile K[0:keys]^T
        gemm<Real>(false, true, rows, keys, g.D, Real(1), qt, g.ldq, kb, g.ldk, Real(0), s.data(),
                   keys);
        tile_softmax<Real>(sel, block_size, base + r0, h, r0, rows, keys, scale, s.data(),
                           lse + (base + r0) * g.Hq + h, nullptr, g.Hq, allowed);
        // O_tile (rows, D) = P V[0:keys]
        gemm<Real>(false, false, rows, g.D, keys, Real(1), s.data(), keys, vb, g.ldk, Real(0),
                   out + (base + r0) * g.ldq + h * g.D, g.ldq);
      }
  });
}

template <typename Real>
void attention_blas_backward(const attn::Layout& layout, const attn::Selection* sel,
                             int64_t block_size, double scale, const Real* q, const Real* k,
                             const Real* v, const Real* out, const Real* lse, const Real* dout,
                             Real* dq, Real* dk, Real* dv) {
  struct Scratch {
    std::vector<Real> p, dp;  // (R, keys) probabilities, then their gradient
    std::vector<double> delta;
    std::vector<uint8_t> allowed;
  };
  const Geometry g = geometry(layout);
  for_each_kv_task<Scratch>(layout, g, [&](Scratch& scratch, int64_t base, int64_t n, int64_t kvh,
                                           int64_t kv) {
    auto& [p, dp, delta, allowed] = scratch;
    const Real* kb = k + kv;
    const Real* vb = v + kv;
    Real* dkb = dk + kv;
    Real* dvb = dv + kv;
    for (int64_t t = 0; t < n; ++t)  // this task owns dk, dv of (sequence, kv head)
      for (int64_t d = 0; d < g.D; ++d) dkb[t * g.ldk + d] = dvb[t * g.ldk + d] = Real(0);
    for (int64_t h = kvh * g.group; h < (kvh + 1) * g.group; ++h)
      for (int64_t r0 = 0; r0 < n; r0 += kTileRows) {
        const int64_t rows = std::min(kTileRows, n - r0), keys = r0 + rows;
        const size_t row0 = static_cast<size_t>((base + r0) * g.ldq + h * g.D);
        const Real* qt = q + row0;
        const Real* dot = dout + row0;
        p.resize(static_cast<size_t>(rows * keys));
        dp.resize(p.size());
        // P: recomputed from the scores and the forward's lse.
        gemm<Real>(false, true, rows, keys, g.D, Real(1), qt, g.ldq, kb, g.ldk, Real(0), p.data(),
                   keys);
        tile_softmax<Real>(sel, block_size, base + r0, h, r0, rows, keys, scale, p.data(),
                           nullptr, lse + (base + r0) * g.Hq + h, g.Hq, allowed);
        // dV[0:keys] += P^T dO_tile;  dP (rows, keys) = dO_tile V[0:keys]^T
        gemm<Real>(true, false, keys, g.D, rows, Real(1), p.data(), keys, dot, g.ldq, Real(1),
                   dvb, g.ldk);
        gemm<Real>(false, true, rows, keys, g.D, Real(1), dot, g.ldq, vb, g.ldk, Real(0),
                   dp.data(), keys);
        // dS = P * (dP - rowsum(dO * O)), times the scale: the gradient of the scores.
        delta.assign(static_cast<size_t>(rows), 0.0);
        for (int64_t i = 0; i < rows; ++i) {
          for (int64_t d = 0; d < g.D; ++d)
            delta[i] += static_cast<double>(dot[i * g.ldq + d]) * out[row0 + i * g.ldq + d];
          for (int64_t j = 0; j < keys; ++j)
            dp[i * keys + j] =
                static_cast<Real>(scale * p[i * keys + j] * (dp[i * keys + j] - delta[i]));
        }
        // dQ_tile = dS K[0:keys];  dK[0:keys] += dS^T Q_tile
        gemm<Real>(false, false, rows, g.D, keys, Real(1), dp.data(), keys, kb, g.ldk, Real(0),
                   dq + row0, g.ldq);
        gemm<Real>(true, false, keys, g.D, rows, Real(1), dp.data(), keys, qt, g.ldq, Real(1),
                   dkb, g.ldk);
      }
  });
}

#define MOBA_INSTANTIATE(Real)                                                                     \
  template void attention_blas_forward<Real>(const attn::Layout&, const attn::Selection*, int64_t, \
                                             double, const Real*, const Real*, const Real*, Real*, \
                                             Real*);                                               \
  template void attention_blas_backward<Real>(                                                     \
      const attn::Layout&, const attn::Selection*, int64_t, double, const Real*, const Real*,      \
      const Real*, const Real*, const Real*, const Real*, Real*, Real*, Real*);
MOBA_INSTANTIATE(float)
MOBA_INSTANTIATE(double)
#undef MOBA_INSTANTIATE

}  // namespace moba::model
