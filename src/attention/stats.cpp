#include "attention/stats.h"

#include <algorithm>

namespace moba::attn {

double dense_pairs(const Layout& layout, int64_t pos0) {
  double pairs = 0.0;
  for (int64_t b = 0; b < layout.batch(); ++b) {
    const double T = static_cast<double>(layout.seq_len(b));
    pairs += static_cast<double>(pos0) * T + T * (T + 1.0) / 2.0;
  }
  return pairs * static_cast<double>(layout.num_q_heads);
}

double moba_pairs(const Layout& layout, const MobaConfig& cfg, const Selection& sel,
                  int64_t pos0) {
  double pairs = 0.0;
  const int64_t S = cfg.block_size;
  for (int64_t b = 0; b < layout.batch(); ++b)
    for (int64_t t = 0; t < layout.seq_len(b); ++t) {
      const int64_t tok = layout.seq_begin(b) + t, p = pos0 + t, c = p / S;
      for (int64_t h = 0; h < layout.num_q_heads; ++h)
        for (int32_t j : sel.at(tok, h)) {
          if (j < 0) continue;
          pairs += j == c ? static_cast<double>(p - c * S + 1) : static_cast<double>(S);
        }
    }
  return pairs;
}

}  // namespace moba::attn
