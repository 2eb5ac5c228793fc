// CUDA attention for decoding (attention/decode.h is the CPU reference): a bf16 KV cache per
// layer with fp32 block means, and one new query token per sequence, dense (split-K
// flash-decoding over the cache) or MoBA (gate over the block-mean cache, then attention over
// the selected blocks only, split over blocks). Grouped-query attention reads each K/V row
// once per kv head, never repeated in memory. Every pointer is device memory:
//   cache k, v : (B, T_max, Hkv, D) bf16     means : (B, T_max / S, Hkv, D) fp32
//   q, out     : (B, Hq, D) bf16             lse   : (B, Hq) fp32, natural log
//   sel        : (B, Hq, K) int32, gate.h's slot order (ascending, current last, -1 padding)
// Sequence lengths live on the host (DecodeCache::len) and on the device (len_dev), kept
// equal by the functions below; the query of sequence b is its token at len[b] - 1.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "attention/layout.h"

namespace moba::attn::cuda {

using bf16 = __nv_bfloat16;

// One layer's cache. Owns its device memory (cudaMalloc'd at construction; moba::Error when
// it does not fit, naming the bytes asked for). Head dim 64 or 128, capacity <= 2^30.
class DecodeCache {
 public:
  DecodeCache(int64_t batch, int64_t capacity, int64_t kv_heads, int64_t head_dim,
              int64_t block_size);
  ~DecodeCache();
  DecodeCache(const DecodeCache&) = delete;
  DecodeCache& operator=(const DecodeCache&) = delete;

  int64_t batch() const { return B_; }
  int64_t capacity() const { return T_; }
  int64_t kv_heads() const { return Hkv_; }
  int64_t head_dim() const { return D_; }
  int64_t block_size() const { return S_; }
  const std::vector<int64_t>& len() const { return len_; }  // host copy
  int64_t max_len() const;
  size_t bytes() const;  // device bytes held

  bf16* k() const { return k_; }
  bf16* v() const { return v_; }
  float* means() const { return means_; }
  int32_t* len_dev() const { return len_dev_; }

  // Starts every sequence anew from packed prefill K (after RoPE) and V, (N, Hkv, D) bf16,
  // sequence b holding rows [cu[b], cu[b+1]) (cu_seqlens: host, B + 1 entries): copies them
  // to rows [0, n_b) and computes the mean of every full block. moba::Error when n_b >
  // capacity.
  void fill(const std::vector<int64_t>& cu_seqlens, const bf16* k, const bf16* v,
            cudaStream_t stream = nullptr);
  // Appends one token per sequence, k_new and v_new (B, Hkv, D), at row len[b], len[b] += 1,
  // and completes the mean of a block whose last row this was. moba::Error naming the
  // sequence when one is at capacity.
  void append(const bf16* k_new, const bf16* v_new, cudaStream_t stream = nullptr);
  // Declares rows [0, lengths[b]) of k() and v() valid as they are (written in place by the
  // caller, e.g. benchmark caches filled with fill_random_bf16: no packed copy of a huge
  // prefill) and computes the mean of every full block. moba::Error when a length is
  // outside [0, capacity]. (Added by the implementation: not in the first API.)
  // means_written: the caller wrote means() of every full block too (the MoBA gate's
  // moba_gate overload with means_out = means(), blocks_per_seq = capacity / S, computes
  // them bit-equal while it scores), so they are not computed again.
  void adopt(const std::vector<int64_t>& lengths, cudaStream_t stream = nullptr,
             bool means_written = false);

 private:
  void upload_lengths_and_means(cudaStream_t stream, int64_t max_full_blocks);

  int64_t B_, T_, Hkv_, D_, S_;
  bf16* k_ = nullptr;
  bf16* v_ = nullptr;
  float* means_ = nullptr;
  int32_t* len_dev_ = nullptr;
  int32_t* cu_dev_ = nullptr;
  std::vector<int64_t> len_;
};

// Head dim 64 or 128 (the kernels' tiles), Hq / Hkv <= 64, K <= 64, capacity <= 2^30;
// any S >= 1 (S a multiple of 128 keeps every warp busy). Else moba::Error at construction.
// Scratch of the decode kernels for one (B, Hq, Hkv, D, S, K, capacity) shape: split-K
// partial outputs and their log-sum-exps, gate scores. Built once, reused every step.
class DecodePlan {
 public:
  DecodePlan(int64_t batch, int64_t capacity, int64_t num_q_heads, int64_t num_kv_heads,
             int64_t head_dim, const MobaConfig& cfg, const Options& opt);
  ~DecodePlan();
  DecodePlan(const DecodePlan&) = delete;
  DecodePlan& operator=(const DecodePlan&) = delete;
  size_t workspace_bytes() const;
  // --- internal, for the launchers ---
  struct Impl;
  Impl& impl() { return *impl_; }

 private:
  Impl* impl_ = nullptr;
};

// Dense: sequence b's query attends positions [0, len[b]). out, lse overwritten.
void decode_dense(DecodePlan& plan, const DecodeCache& cache, const bf16* q, bf16* out,
                  float* lse, cudaStream_t stream = nullptr);
// MoBA: the current block c = (len[b]-1) / S (its cached rows), plus the K-1 past blocks of
// highest fp32 score q . mean (ties to the more recent block); every past block when
// c <= K-1. sel (optional, may be null) receives the selection.
void decode_moba(DecodePlan& plan, const DecodeCache& cache, const bf16* q, bf16* out,
                 float* lse, int32_t* sel = nullptr, cudaStream_t stream = nullptr);

}  // namespace moba::attn::cuda
