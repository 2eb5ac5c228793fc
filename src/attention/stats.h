// Work counts of attention, for FLOP figures and the MoBA density.
#pragma once

#include <cstdint>

#include "attention/gate.h"
#include "attention/layout.h"

namespace moba::attn {

// (query, key) pairs dense causal attention computes, summed over query heads. pos0: the
// position of every sequence's first token in a longer one (a context-parallel shard,
// whose queries also see the pos0 keys before it); 0 on one process.
double dense_pairs(const Layout& layout, int64_t pos0 = 0);
// Pairs MoBA attends to for the given selection, summed over query heads; with pos0 as
// above (the selection then holds block ids of the longer sequence, pos0 a multiple of S).
double moba_pairs(const Layout& layout, const MobaConfig& cfg, const Selection& sel,
                  int64_t pos0 = 0);

// FLOPs of attention over `pairs` (query, key) pairs with head dim D: the forward does two
// products (QK^T and PV), 2 FLOPs per multiply-add each; the backward five, i.e. 2.5x.
inline double attention_fwd_flops(double pairs, int64_t D) { return 4.0 * pairs * D; }
inline double attention_fwd_bwd_flops(double pairs, int64_t D) { return 3.5 * 4.0 * pairs * D; }

}  // namespace moba::attn
