// Attention for decoding: a KV cache per layer and one new query token per sequence,
// dense or MoBA, CPU reference in float or double. The semantics are training's
// (docs/moba.md): decoding a sequence token by token attends exactly what the full-sequence
// forward attends at that position, so logits match.
//
// The cache of one layer, for B sequences of capacity T_max tokens each:
//   k, v   : (B, T_max, Hkv, D)   keys after RoPE, values; rows [0, len[b]) are valid
//   means  : (B, T_max / S, Hkv, D) fp32, the mean of K over every *full* block of each
//            sequence, written when the block's last token is appended (from a running
//            double sum over the block, in position order: the same value gate.h's
//            block_means computes from the whole sequence), so that a decode step gates
//            without re-reading past keys.
// The GPU cache (attention/cuda/decode_cuda.h) has the same layout in bf16 (k, v) and fp32
// (means).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "attention/layout.h"

namespace moba::attn {

template <typename Real>
class KVCache {
 public:
  KVCache() = default;
  // block_size S is only used for the block means (S >= 1; any S for a dense layer).
  // Throws moba::Error for B, T_max, Hkv, D or S < 1.
  KVCache(int64_t batch, int64_t capacity, int64_t kv_heads, int64_t head_dim,
          int64_t block_size);

  int64_t batch() const { return B_; }
  int64_t capacity() const { return T_; }
  int64_t kv_heads() const { return Hkv_; }
  int64_t head_dim() const { return D_; }
  int64_t block_size() const { return S_; }
  int64_t len(int64_t b) const { return len_[b]; }
  // Full blocks of sequence b whose mean is in the cache: len(b) / S.
  int64_t full_blocks(int64_t b) const { return len_[b] / S_; }

  // Empties sequence b (its rows and block sums are forgotten).
  void reset(int64_t b);
  // Appends n tokens to sequence b: k_rows and v_rows are (n, Hkv, D). Throws moba::Error
  // when len(b) + n > capacity (naming both) or a size is wrong. Completes block means as
  // blocks fill.
  void append(int64_t b, int64_t n, std::span<const Real> k_rows, std::span<const Real> v_rows);

  // Row t of sequence b: (Hkv, D).
  const Real* k(int64_t b, int64_t t) const { return &k_[((b * T_ + t) * Hkv_) * D_]; }
  const Real* v(int64_t b, int64_t t) const { return &v_[((b * T_ + t) * Hkv_) * D_]; }
  // Mean of full block j of sequence b: (Hkv, D) fp32.
  const float* mean(int64_t b, int64_t j) const {
    return &means_[((b * (T_ / S_) + j) * Hkv_) * D_];
  }

  // Bytes this cache holds: K, V, block means, running block sums, lengths.
  size_t bytes() const;

  // Bytes of cache per token of capacity, all sequences' K and V and the block means'
  // share (one fp32 (Hkv, D) row per S tokens).
  static double bytes_per_token(int64_t kv_heads, int64_t head_dim, int64_t block_size,
                                size_t elem_bytes);

 private:
  int64_t B_ = 0, T_ = 0, Hkv_ = 0, D_ = 0, S_ = 1;
  std::vector<Real> k_, v_;
  std::vector<float> means_;
  std::vector<double> sums_;  // (B, Hkv, D) running sum of the block being filled
  std::vector<int64_t> len_;
};

// One query token per sequence, the last token appended to the cache (position
// len(b) - 1 of sequence b), q (B, Hq, D) after RoPE. out (B, Hq, D), lse (B, Hq) natural
// log-sum-exp of the scaled scores. Sequences with len(b) == 0 are a moba::Error.
// Dense: positions [0, len(b)).
template <typename Real>
void decode_dense(const KVCache<Real>& cache, int64_t num_q_heads, const Options& opt,
                  std::span<const Real> q, std::span<Real> out, std::span<Real> lse);

// MoBA (docs/moba.md): the current block c = (len(b) - 1) / S attended causally (all its
// cached rows), plus the K-1 past blocks j < c with the highest fp32 score q . mean(j)
// (accumulated in double, rounded to float, as gate.h), ties to the more recent block;
// every past block when c <= K - 1. sel, if not null, receives the chosen blocks (B, Hq, K)
// in gate.h's slot order (ascending, current last, -1 padding).
template <typename Real>
void decode_moba(const KVCache<Real>& cache, int64_t num_q_heads, const MobaConfig& cfg,
                 const Options& opt, std::span<const Real> q, std::span<Real> out,
                 std::span<Real> lse, std::vector<int32_t>* sel = nullptr);

}  // namespace moba::attn
