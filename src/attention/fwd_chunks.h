// The chunked MoBA forward's host side (docs/kernel_notes.md, "v16"): which query tokens
// each chunk of the CUDA forward covers, and the scratch the forward needs, in every build
// so that CPU tests and the planners can check the sizes.
//
// The CUDA MoBA forward writes an fp32 partial output and lse for each (query token, query
// head, past slot) before the current-block kernel merges them: N x Hq x (K-1) x (D + 1)
// floats. Chunked, the gather index, the past-block kernel and the current-block + merge
// kernel run per chunk of query tokens, and the partials hold one chunk's slots. A chunk
// boundary inside a sequence lies a multiple of the granule max(S, 128) after the sequence's
// start (so a query tile of 64 or 128 rows, and a MoBA block, never straddles two chunks);
// a chunk holds at most `chunk_tokens` tokens and may hold the ends and starts of several
// sequences.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "attention/layout.h"

namespace moba::attn {

// The environment knob of the chunk size (tokens; 0 or unset = one pass, unchunked).
inline constexpr const char* kFwdChunkEnv = "MOBA_FWD_CHUNK_TOKENS";

// Boundaries inside a sequence are multiples of this many tokens from its start: max(S, 128).
int64_t fwd_chunk_granule(const MobaConfig& cfg);

// The chunk size the CUDA forward uses: opt.fwd_chunk_tokens where >= 0, else the
// environment's MOBA_FWD_CHUNK_TOKENS (unset or empty = 0), read on every call. 0 = off.
// Throws moba::Error naming the value where it is not a number >= 0.
int64_t fwd_chunk_tokens(const Options& opt);

// The query-token ranges [first, last) of the chunks, in order, covering [0, N). 0 or a
// size >= N gives the single range [0, N). Throws moba::Error unless chunk_tokens is 0 or a
// positive multiple of fwd_chunk_granule(cfg).
std::vector<std::pair<int64_t, int64_t>> fwd_chunks(const Layout& layout, const MobaConfig& cfg,
                                                    int64_t chunk_tokens);

// Query tokens per CTA of the gather index's count and fill kernels
// (attention/cuda/gather_index.cu): a CTA bins the entries of this many tokens of one head.
inline constexpr int64_t kIndexPieceTokens = 2048;

// v22 (docs/kernel_notes.md; the default, `MOBA_INDEX_PIECE_TOKENS=auto`): the single
// pass's pieces sized to the launch. At the trainer's shapes (8K tokens, 12 heads) pieces
// of 2048 tokens give 4 x 12 = 48 CTAs for 132 SMs, each walking its 4096 (token, slot)
// pairs in a chain of dependent loads: latency-bound (ncu, results/attention/v19). The rule
// halves the piece, down to kIndexPieceMin, while the CTAs (pieces x query heads) number
// fewer than kIndexPieceCtas (about 8 resident 256-thread CTAs on each SM) and a CTA still
// has at least one pair per bin (piece x (K - 1) >= full blocks: its `rows` shared bins are
// zeroed and flushed by every CTA). Long inputs keep kIndexPieceTokens.
inline constexpr int64_t kIndexPieceMin = 256;
inline constexpr int64_t kIndexPieceCtas = 1024;
inline constexpr int64_t index_piece_tokens_auto(int64_t tokens, int64_t q_heads,
                                                 int64_t full_blocks, int64_t kp) {
  int64_t piece = kIndexPieceTokens;
  while (piece > kIndexPieceMin && (tokens + piece - 1) / piece * q_heads < kIndexPieceCtas &&
         (piece / 2) * kp >= full_blocks)
    piece /= 2;
  return piece;
}

// Buckets per CTA of the gather index's scan (docs/kernel_notes.md, "v19"): the scan over
// chunks x full blocks x kv heads buckets runs on index_scan_ctas(buckets) CTAs; beyond one,
// a first kernel writes each CTA's sums (entries, tiles: two int32) after chunk_tiles' chunks
// + 1 int32, in the same scratch buffer (FwdScratch::chunk_tiles counts them).
inline constexpr int64_t kIndexScanBuckets = 4096;
inline constexpr int64_t index_scan_ctas(int64_t buckets) {
  return buckets <= kIndexScanBuckets ? 1 : (buckets + kIndexScanBuckets - 1) / kIndexScanBuckets;
}
// The int32 the chunk_tiles buffer holds: chunks + 1 tile starts, then 2 per scan CTA where
// there are several.
inline constexpr int64_t chunk_tiles_ints(int64_t chunks, int64_t buckets) {
  const int64_t ctas = index_scan_ctas(buckets);
  return chunks + 1 + (ctas > 1 ? 2 * ctas : 0);
}

// The gather index's CTA pieces of a chunking (docs/kernel_notes.md, "v18"): each chunk of
// `chunks` (fwd_chunks' ranges, contiguous from 0) cut into pieces of at most
// kIndexPieceTokens tokens, in order, so that a CTA's tokens lie in one chunk. Flattened
// for the device as int32 pairs {first token, chunk}, pieces + 1 of them: the last is
// {N, number of chunks}, so that piece i holds tokens [x_i, x_{i+1}) of chunk y_i. Throws
// moba::Error naming the problem where the ranges are empty, not contiguous from 0 or past
// int32.
std::vector<int32_t> fwd_index_pieces(const std::vector<std::pair<int64_t, int64_t>>& chunks);
// How many pieces fwd_index_pieces cuts (the count and fill kernels' CTAs per head).
int64_t fwd_index_piece_count(const std::vector<std::pair<int64_t, int64_t>>& chunks);

// The MoBA forward's scratch (attention/cuda/internal.h's slots), bytes, for one plan. The
// partials are sized by the longest chunk's tokens (N unchunked); the gather index is the
// whole batch's, built once for all chunks, its buckets keyed by (chunk, full block, kv
// head) so that the tiles come out in chunk order.
struct FwdScratch {
  int64_t chunks = 0;        // number of chunks (1 unchunked)
  int64_t chunk_tokens = 0;  // tokens of the longest chunk
  int64_t part_o = 0;        // fp32 (chunk, Hq, K-1, D)
  int64_t part_lse = 0;      // fp32 (chunk, Hq, K-1)
  int64_t entries = 0;       // int32 (N, Hq, K-1): the whole batch's
  int64_t tiles = 0;         // int4 work list: entries / 128 + chunks x buckets + 1
  int64_t buckets = 0;       // counts and offsets: int32 (chunks x full blocks x Hkv + 1) each
  int64_t chunk_tiles = 0;   // int32 (chunks + 1): each chunk's first tile, then the total;
                             // then the scan's CTA sums (chunk_tiles_ints)
  int64_t total() const {
    return part_o + part_lse + entries + tiles + buckets + chunk_tiles;
  }
};
// Zero where the forward needs no partials (K = 1 or no full block).
FwdScratch fwd_scratch_bytes(const Layout& layout, const MobaConfig& cfg, int64_t chunk_tokens);

}  // namespace moba::attn
