// Shapes shared by every attention function, CPU and GPU.
//
// Vocabulary: B sequences, N packed tokens, Hq query heads, Hkv key/value heads, D head
// dim, S block size, K top-k. Sequences are packed along one token axis:
//   q, out, dout, dq : (N, Hq, D)      k, v, dk, dv : (N, Hkv, D)      lse : (N, Hq)
// A fixed-length batch (B, T, H, D) is the packed case cu_seqlens = {0, T, 2T, ..., B*T},
// so one code path serves both. Query head h reads kv head h / (Hq / Hkv) (grouped-query
// attention); K/V are never repeated in memory.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace moba::attn {

struct Layout {
  std::vector<int64_t> cu_seqlens;  // (B + 1): 0 = c[0] < c[1] < ... < c[B] = N
  int64_t num_q_heads = 0;          // Hq
  int64_t num_kv_heads = 0;         // Hkv, divides Hq
  int64_t head_dim = 0;             // D

  // (B, T, Hq/Hkv, D) batch of equal-length sequences. Throws moba::Error if invalid.
  static Layout batched(int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t D);
  // Packed documents with the given boundaries. Throws moba::Error if invalid.
  static Layout varlen(std::vector<int64_t> cu_seqlens, int64_t Hq, int64_t Hkv, int64_t D);

  // Throws moba::Error naming the first problem: empty or non-increasing cu_seqlens,
  // heads or head dim < 1, Hq not a multiple of Hkv.
  void validate() const;

  int64_t batch() const { return static_cast<int64_t>(cu_seqlens.size()) - 1; }
  int64_t tokens() const { return cu_seqlens.empty() ? 0 : cu_seqlens.back(); }  // N
  int64_t group() const { return num_q_heads / num_kv_heads; }  // Hq / Hkv
  int64_t seq_begin(int64_t b) const { return cu_seqlens[b]; }
  int64_t seq_len(int64_t b) const { return cu_seqlens[b + 1] - cu_seqlens[b]; }
  int64_t max_seq_len() const;

  size_t q_elems() const { return static_cast<size_t>(tokens() * num_q_heads * head_dim); }
  size_t kv_elems() const { return static_cast<size_t>(tokens() * num_kv_heads * head_dim); }
  size_t lse_elems() const { return static_cast<size_t>(tokens() * num_q_heads); }
};

// MoBA's two parameters (docs/moba.md).
struct MobaConfig {
  int64_t block_size = 512;  // S >= 1 (the paper's moba_chunk_size)
  int64_t top_k = 3;         // K >= 1, the current block included

  void validate() const;  // throws moba::Error for S < 1 or K < 1
};

struct Options {
  double softmax_scale = 0.0;  // 0 selects 1/sqrt(D)
  // The CUDA MoBA forward's query chunk (fwd_chunks.h): tokens per chunk, a multiple of
  // max(S, 128); 0 = one pass; -1 = the environment's MOBA_FWD_CHUNK_TOKENS (unset = 0).
  int64_t fwd_chunk_tokens = -1;

  double scale_for(const Layout& l) const;
};

// The GPU kernels' limits (attention/cuda), known in every build so that a CPU-only machine
// can tell a configuration the GPU cannot run (model::cuda_kernel_limits): head dims with
// compiled kernels; MoBA block sizes S, powers of two >= 64 (a tile of 64 or 128 queries or
// keys never straddles two blocks); top-k K in 1..16.
inline constexpr int64_t kCudaHeadDims[] = {64, 128};
inline constexpr int64_t kCudaMinBlockSize = 64;
inline constexpr int64_t kCudaMaxTopK = 16;
inline bool cuda_head_dim_supported(int64_t D) {
  for (int64_t d : kCudaHeadDims)
    if (d == D) return true;
  return false;
}

// The sizes the GPU kernels can index, known in every build (so CPU tests and tools can ask
// too). Offsets into the (N, H, D) tensors and the scratch are 64-bit; what stays 32-bit:
// token indices (cu_seqlens is int32), (token, query head) row ids token * Hq + head (lse,
// delta, the kernels' row lists; formed for up to 128 rows past the end of a tile), and
// MoBA's gather entries (token * Hq + head) * (K - 1) + slot with their int32 bucket
// offsets; per-launch work counts B * Hq * (query tiles of 64) are int32, and the sequence
// index is gridDim.z (<= 65535). Throws moba::Error naming the size and its limit. moba:
// the MoBA configuration (its gather entries), or null for dense attention only.
void check_cuda_sizes(const Layout& layout, const MobaConfig* moba);

// Checks that a buffer has the number of elements the layout implies; `what` names it
// in the message ("q", "dk", ...).
void check_size(const char* what, size_t got, size_t want);

}  // namespace moba::attn
