#include "attention/layout.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace moba::attn {

Layout Layout::batched(int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t D) {
  MOBA_CHECK(B >= 1, "batch size B must be >= 1, got ", B);
  MOBA_CHECK(T >= 1, "sequence length T must be >= 1, got ", T);
  Layout l;
  l.cu_seqlens.resize(static_cast<size_t>(B) + 1);
  for (int64_t b = 0; b <= B; ++b) l.cu_seqlens[b] = b * T;
  l.num_q_heads = Hq;
  l.num_kv_heads = Hkv;
  l.head_dim = D;
  l.validate();
  return l;
}

Layout Layout::varlen(std::vector<int64_t> cu_seqlens, int64_t Hq, int64_t Hkv, int64_t D) {
  Layout l;
  l.cu_seqlens = std::move(cu_seqlens);
  l.num_q_heads = Hq;
  l.num_kv_heads = Hkv;
  l.head_dim = D;
  l.validate();
  return l;
}

void Layout::validate() const {
  MOBA_CHECK(cu_seqlens.size() >= 2,
             "cu_seqlens must hold at least 2 offsets (one sequence), got ", cu_seqlens.size());
  MOBA_CHECK(cu_seqlens[0] == 0, "cu_seqlens must start at 0, got ", cu_seqlens[0]);
  for (size_t i = 1; i < cu_seqlens.size(); ++i) {
    MOBA_CHECK(cu_seqlens[i] > cu_seqlens[i - 1],
               "cu_seqlens must be strictly increasing (every sequence holds >= 1 token), "
               "but cu_seqlens[", i, "] = ", cu_seqlens[i], " <= cu_seqlens[", i - 1,
               "] = ", cu_seqlens[i - 1]);
  }
  MOBA_CHECK(num_q_heads >= 1, "number of query heads Hq must be >= 1, got ", num_q_heads);
  MOBA_CHECK(num_kv_heads >= 1, "number of key/value heads Hkv must be >= 1, got ",
             num_kv_heads);
  MOBA_CHECK(num_q_heads % num_kv_heads == 0,
             "number of query heads Hq must be a multiple of key/value heads Hkv "
             "(grouped-query attention), got Hq = ",
             num_q_heads, ", Hkv = ", num_kv_heads);
  MOBA_CHECK(head_dim >= 1, "head dim D must be >= 1, got ", head_dim);
}

int64_t Layout::max_seq_len() const {
  int64_t m = 0;
  for (int64_t b = 0; b < batch(); ++b) m = std::max(m, seq_len(b));
  return m;
}

void MobaConfig::validate() const {
  MOBA_CHECK(block_size >= 1, "MoBA block size S must be >= 1, got ", block_size);
  MOBA_CHECK(top_k >= 1, "MoBA top-k K must be >= 1 (the current block counts), got ", top_k);
}

double Options::scale_for(const Layout& l) const {
  MOBA_CHECK(std::isfinite(softmax_scale) && softmax_scale >= 0.0,
             "softmax scale must be finite and > 0 (or 0 for 1/sqrt(D)), got ", softmax_scale);
  return softmax_scale > 0.0 ? softmax_scale : 1.0 / std::sqrt(static_cast<double>(l.head_dim));
}

void check_size(const char* what, size_t got, size_t want) {
  MOBA_CHECK(got == want, "tensor ", what, " has ", got, " elements but the layout needs ",
             want);
}

}  // namespace moba::attn
