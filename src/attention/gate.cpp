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
void moba_gate_part(const Layout& part, const MobaConfig& cfg, int64_t first,
                    std::span<const Real> q, std::span<const float> means,
                    std::span<int32_t> slots, int64_t first_token) {
  part.validate();
  cfg.validate();
  MOBA_CHECK(part.batch() == 1, "MoBA gate: the tokens must be one sequence's, got ",
             part.batch(), " sequences");
  MOBA_CHECK(first >= 0, "MoBA gate: the first token's position must be >= 0, got ", first);
  check_size("q", q.size(), part.q_elems());
  const int64_t S = cfg.block_size, K = cfg.top_k, D = part.head_dim, n = part.tokens();
  const int64_t Hq = part.num_q_heads, Hkv = part.num_kv_heads;
  check_size("selection", slots.size(), part.lse_elems() * static_cast<size_t>(K));
  const int64_t last_c = (first + n - 1) / S;  // the last token's current block
  if (last_c > K - 1)  // below that every past block is selected without a score
    MOBA_CHECK(static_cast<int64_t>(means.size()) >= last_c * Hkv * D, "MoBA gate: tokens "
               "up to position ", first + n - 1, " need the means of blocks 0..", last_c - 1,
               ", got ", means.size(), " floats (", Hkv, " kv heads x ", D, " per block)");
  std::fill(slots.begin(), slots.end(), -1);

  std::vector<std::pair<float, int32_t>> scored;  // (score, block id) of past blocks
  for (int64_t i = 0; i < n; ++i) {
    const int64_t tok = first_token + i;
    const int64_t c = (first + i) / S;  // current block
    for (int64_t h = 0; h < Hq; ++h) {
      const std::span<int32_t> at = slots.subspan(static_cast<size_t>((i * Hq + h) * K),
                                                  static_cast<size_t>(K));
      if (c <= K - 1) {  // every past block fits: MoBA equals dense causal here
        for (int64_t j = 0; j <= c; ++j) at[j] = static_cast<int32_t>(j);
        continue;
      }
      const int64_t kvh = h / part.group();
      const Real* qr = &q[(i * Hq + h) * D];
      scored.clear();
      for (int64_t j = 0; j < c; ++j) {
        const float* m = &means[(j * Hkv + kvh) * D];
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
      for (int64_t s = 0; s < K - 1; ++s) at[s] = scored[s].second;
      at[K - 1] = static_cast<int32_t>(c);
      std::sort(at.begin(), at.end());
    }
  }
}

template <typename Real>
Selection moba_gate(const Layout& layout, const MobaConfig& cfg, std::span<const Real> q,
                    std::span<const Real> k) {
  layout.validate();
  cfg.validate();
  check_size("q", q.size(), layout.q_elems());
  const int64_t K = cfg.top_k, D = layout.head_dim;
  const int64_t Hq = layout.num_q_heads, Hkv = layout.num_kv_heads;
  const std::vector<float> means = block_means(layout, cfg, k);  // (rows, Hkv, D)

  Selection sel;
  sel.top_k = K;
  sel.num_q_heads = Hq;
  sel.blocks.assign(layout.lse_elems() * static_cast<size_t>(K), -1);
  for (int64_t b = 0; b < layout.batch(); ++b) {
    const int64_t len = layout.seq_len(b), tok0 = layout.seq_begin(b);
    const Layout seq = Layout::batched(1, len, Hq, Hkv, D);
    const auto row = static_cast<size_t>(Hkv * D);
    const auto q_row = static_cast<size_t>(Hq * D), sel_row = static_cast<size_t>(Hq * K);
    moba_gate_part(seq, cfg, 0, q.subspan(static_cast<size_t>(tok0) * q_row,
                                          static_cast<size_t>(len) * q_row),
                   std::span<const float>(means).subspan(
                       static_cast<size_t>(full_block_offset(layout, cfg, b)) * row,
                       static_cast<size_t>(len / cfg.block_size) * row),
                   std::span<int32_t>(sel.blocks).subspan(static_cast<size_t>(tok0) * sel_row,
                                                          static_cast<size_t>(len) * sel_row),
                   tok0);
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
template void moba_gate_part<float>(const Layout&, const MobaConfig&, int64_t,
                                    std::span<const float>, std::span<const float>,
                                    std::span<int32_t>, int64_t);
template void moba_gate_part<double>(const Layout&, const MobaConfig&, int64_t,
                                     std::span<const double>, std::span<const float>,
                                     std::span<int32_t>, int64_t);

}  // namespace moba::attn
