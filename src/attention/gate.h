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

}  // namespace moba::attn
