// The MoBA gate: which blocks each query attends to. Its own function, so that tests and
// tools can inspect the selection, and so that attention can be run (and compared across
// devices) on one fixed selection.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "attention/layout.h"

namespace moba::attn {

// Per (token, query head): K slots of block ids, local to the token's sequence (block j
// holds positions [j*S, (j+1)*S) of that sequence). Slots hold the selected ids in
// ascending order, the current block last, and are padded with -1 when fewer than K
// blocks exist before and including the current one.
struct Selection {
  int64_t top_k = 0;            // K
  int64_t num_q_heads = 0;      // Hq
  std::vector<int32_t> blocks;  // (N, Hq, K)

  std::span<const int32_t> at(int64_t token, int64_t head) const {
    return {blocks.data() + (token * num_q_heads + head) * top_k, static_cast<size_t>(top_k)};
  }
  std::span<int32_t> at(int64_t token, int64_t head) {
    return {blocks.data() + (token * num_q_heads + head) * top_k, static_cast<size_t>(top_k)};
  }
};

// Query tokens per CTA of the CUDA gate (attention/cuda/gate.cu; docs/kernel_notes.md, "v21"):
// 128 (one m-tile of 16 rows per warp) or 256 (two m-tiles: each block-mean fragment read
// from shared memory feeds two MMAs; only lists of K <= 5 have that instance). With
// MOBA_GATE_ROWS unset or `auto`, 256 where the 128-row grid (query heads x 128-token tiles
// of the longest sequence x batch) has at least kGateTwoTileCtas CTAs: on the H200 256 rows
// made the gate 5% faster at 128K and 13% at 1M, 2% at 32K with 16 heads (4096 CTAs), but
// 2-4% slower at 8K, where half the CTAs leave SMs idle.
inline constexpr int64_t kGateTwoTileCtas = 4096;
inline constexpr int gate_rows_auto(int64_t max_len, int64_t q_heads, int64_t batch,
                                    int64_t top_k) {
  return top_k <= 5 && (max_len + 127) / 128 * q_heads * batch >= kGateTwoTileCtas ? 256 : 128;
}

// Index of sequence b's first full block among all sequences' full blocks.
int64_t full_block_offset(const Layout& layout, const MobaConfig& cfg, int64_t b);

// Block means of K: (full blocks of all sequences, Hkv, D) in float. Only full blocks
// have a mean: a trailing partial block is always some query's current block, never a
// candidate. Block j of sequence b is row full_block_offset(layout, cfg, b) + j.
template <typename Real>
std::vector<float> block_means(const Layout& layout, const MobaConfig& cfg,
                               std::span<const Real> k);

// The selection of docs/moba.md, steps 2-5, for every token and query head:
// current block c = t / S, plus the K-1 past blocks j < c with the highest score
// s_j = q_t . mean(k over block j). Scores are fp32 values (accumulated in double, then
// rounded to float), so that float and double inputs select alike; ties go to the more
// recent block. The gate has no gradient.
template <typename Real>
Selection moba_gate(const Layout& layout, const MobaConfig& cfg, std::span<const Real> q,
                    std::span<const Real> k);

// moba_gate's selection for consecutive tokens of one sequence, from block means computed
// elsewhere: `part` shapes their queries q as one sequence of n tokens, the first at
// position `first` of its sequence (so token i's current block is (first + i) / S); means
// holds the sequence's full-block means from block 0, (blocks, Hkv, D) as block_means
// makes them, at least the blocks before the last token's current block. Writes slots
// (n, Hq, K) in Selection's order. Errors name token first_token + i: first_token is the
// first token's index in the caller's numbering. moba_gate is this on each sequence with
// first = 0 (first_token its packed index); context parallelism (dist/context_parallel.h)
// runs it on one rank's shard with every rank's means.
template <typename Real>
void moba_gate_part(const Layout& part, const MobaConfig& cfg, int64_t first,
                    std::span<const Real> q, std::span<const float> means,
                    std::span<int32_t> slots, int64_t first_token);

}  // namespace moba::attn
