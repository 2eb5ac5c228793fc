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

void check_cuda_sizes(const Layout& l, const MobaConfig* moba) {
  l.validate();
  if (moba) moba->validate();
  // Products in long double: exact enough for comparisons against 2^31 and never
  // overflowing, whatever the (absurd) inputs.
  using LD = long double;
  constexpr LD k2p31 = 2147483648.0L;  // 2^31
  const int64_t N = l.tokens(), B = l.batch(), Hq = l.num_q_heads, Hkv = l.num_kv_heads;
  const int64_t D = l.head_dim, T = l.max_seq_len();
  MOBA_CHECK(static_cast<LD>(N) < k2p31, "CUDA attention: N = ", N,
             " tokens; token indices and cu_seqlens are int32, N must be < 2^31");
  MOBA_CHECK(static_cast<LD>(N + 128) * static_cast<LD>(Hq) < k2p31,
             "CUDA attention: N * Hq = ", N, " * ", Hq, " (token, query head) rows; row ids "
             "token * Hq + head are int32, (N + 128) * Hq must be < 2^31");
  MOBA_CHECK(B <= 65535, "CUDA attention: ", B, " sequences in one batch; the kernels take "
             "the sequence from gridDim.z, at most 65535");
  MOBA_CHECK(Hq <= 65535 && Hkv <= 65535, "CUDA attention: Hq = ", Hq, ", Hkv = ", Hkv,
             " heads; the kernels take the head from a grid dimension, at most 65535");
  MOBA_CHECK(static_cast<LD>(B) * static_cast<LD>(Hq) * static_cast<LD>((T + 63) / 64) < k2p31,
             "CUDA attention: B * Hq * ceil(T / 64) = ", B, " * ", Hq, " * ", (T + 63) / 64,
             " query tiles (T = ", T, ", the longest sequence); tile counts are int32, "
             "must be < 2^31");
  const int64_t kp = moba ? moba->top_k - 1 : 0;
  if (kp > 0)
    MOBA_CHECK(static_cast<LD>(N) * static_cast<LD>(Hq) * static_cast<LD>(kp) < k2p31,
               "CUDA MoBA: N * Hq * (K - 1) = ", N, " * ", Hq, " * ", kp, " gather entries "
               "(token, query head, past slot); entries and their bucket offsets are int32, "
               "must be < 2^31");
  // Tensors and scratch: q, out, dout, dq (bf16) and the fp32 dQ accumulator per (N, Hq,
  // D); k, v, dk, dv (bf16) per (N, Hkv, D); MoBA's fp32 partial outputs (N, Hq, K-1, D).
  const LD bytes = static_cast<LD>(N) * static_cast<LD>(D) *
                   (static_cast<LD>(Hq) * (4 * 2 + 4 + 4 * kp) + static_cast<LD>(Hkv) * 4 * 2);
  MOBA_CHECK(bytes < 4611686018427387904.0L, "CUDA attention: the tensors and scratch of N = ",
             N, ", Hq = ", Hq, ", Hkv = ", Hkv, ", D = ", D, " take ",
             static_cast<double>(bytes), " bytes, more than 2^62 (byte counts are int64)");
}

void check_size(const char* what, size_t got, size_t want) {
  MOBA_CHECK(got == want, "tensor ", what, " has ", got, " elements but the layout needs ",
             want);
}

}  // namespace moba::attn
