#include "attention/gate.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "core/error.h"

namespace moba::attn {

int64_t full_block_offset(const Layout& layout, const MobaConfig& cfg, int64_t b) {
  int64_t off = 0;
  for (int64_t i = 0; i < b; ++i) off += layout.seq_len(i) / cfg.block_size;
  return off;
}

template <typename Real>
std::vector<float> block_means(const Layout& layout, const MobaConfig& cfg,
                               std::span<const Real> k) {
  layout.validate();
  cfg.validate();
  check_size("k", k.size(), layout.kv_elems());
  const int64_t S = cfg.block_size, Hkv = layout.num_kv_heads, D = layout.head_dim;
  const int64_t rows = full_block_offset(layout, cfg, layout.batch());
  std::vector<float> means(static_cast<size_t>(rows * Hkv * D));  // (rows, Hkv, D)
  std::vector<double> acc(static_cast<size_t>(D));
  for (int64_t b = 0; b < layout.batch(); ++b) {
    const int64_t row0 = full_block_offset(layout, cfg, b);
    for (int64_t j = 0; j < layout.seq_len(b) / S; ++j) {
      for (int64_t h = 0; h < Hkv; ++h) {
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t s = 0; s < S; ++s) {
          const Real* kr = &k[((layout.seq_begin(b) + j * S + s) * Hkv + h) * D];
          for (int64_t d = 0; d < D; ++d) acc[d] += static_cast<double>(kr[d]);
        }
        float* m = &means[((row0 + j) * Hkv + h) * D];
        for (int64_t d = 0; d < D; ++d) m[d] = static_cast<float>(acc[d] / static_cast<double>(S));
      }
    }
  }
  return means;
}

template <typename Real>
Selection moba_gate(const Layout& layout, const MobaConfig& cfg, std::span<const Real> q,
                    std::span<const Real> k) {
  layout.validate();
  cfg.validate();
  check_size("q", q.size(), layout.q_elems());
  const int64_t S = cfg.block_size, K = cfg.top_k, D = layout.head_dim;
  const int64_t Hq = layout.num_q_heads, Hkv = layout.num_kv_heads;
  const std::vector<float> means = block_means(layout, cfg, k);  // (rows, Hkv, D)

  Selection sel;
  sel.top_k = K;
  sel.num_q_heads = Hq;
  sel.blocks.assign(layout.lse_elems() * static_cast<size_t>(K), -1);

  std::vector<std::pair<float, int32_t>> scored;  // (score, block id) of past blocks
  for (int64_t b = 0; b < layout.batch(); ++b) {
    const int64_t row0 = full_block_offset(layout, cfg, b);
    for (int64_t t = 0; t < layout.seq_len(b); ++t) {
      const int64_t tok = layout.seq_begin(b) + t;
      const int64_t c = t / S;  // current block
      for (int64_t h = 0; h < Hq; ++h) {
        std::span<int32_t> slots = sel.at(tok, h);
        if (c <= K - 1) {  // every past block fits: MoBA equals dense causal here
          for (int64_t j = 0; j <= c; ++j) slots[j] = static_cast<int32_t>(j);
          continue;
        }
        const int64_t kvh = h / layout.group();
        const Real* qr = &q[(tok * Hq + h) * D];
        scored.clear();
        for (int64_t j = 0; j < c; ++j) {
          const float* m = &means[((row0 + j) * Hkv + kvh) * D];
          double acc = 0.0;
          for (int64_t d = 0; d < D; ++d) acc += static_cast<double>(qr[d]) * m[d];
          const float score = static_cast<float>(acc);
          MOBA_CHECK(std::isfinite(score), "MoBA gate score is not finite (NaN or inf in q or k)"
                     " at token ", tok, ", query head ", h, ", block ", j);
          scored.emplace_back(score, static_cast<int32_t>(j));
        }
        // Highest score first; equal scores: the more recent (larger) block first.
        std::partial_sort(scored.begin(), scored.begin() + (K - 1), scored.end(),
                          [](const auto& a, const auto& b) {
                            return a.first != b.first ? a.first > b.first : a.second > b.second;
                          });
        for (int64_t i = 0; i < K - 1; ++i) slots[i] = scored[i].second;
        slots[K - 1] = static_cast<int32_t>(c);
        std::sort(slots.begin(), slots.end());
      }
    }
  }
  return sel;
}

template std::vector<float> block_means<float>(const Layout&, const MobaConfig&,
                                               std::span<const float>);
template std::vector<float> block_means<double>(const Layout&, const MobaConfig&,
                                                std::span<const double>);
template Selection moba_gate<float>(const Layout&, const MobaConfig&, std::span<const float>,
                                    std::span<const float>);
template Selection moba_gate<double>(const Layout&, const MobaConfig&, std::span<const double>,
                                     std::span<const double>);

}  // namespace moba::attn
