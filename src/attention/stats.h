// Work counts of attention, for FLOP figures and the MoBA density.
#pragma once

#include <cstdint>

#include "attention/gate.h"
#include "attention/layout.h"

namespace moba::attn {

// (query, key) pairs dense causal attention computes, summed over query heads.
double dense_pairs(const Layout& layout);
// Pairs MoBA attends to for the given selection, summed over query heads.
double moba_pairs(const Layout& layout, const MobaConfig& cfg, const Selection& sel);

// FLOPs of attention over `pairs` (query, key) pairs with head dim D: the forward does two
// products (QK^T and PV), 2 FLOPs per multiply-add each; the backward five, i.e. 2.5x.
inline double attention_fwd_flops(double pairs, int64_t D) { return 4.0 * pairs * D; }
inline double attention_fwd_bwd_flops(double pairs, int64_t D) { return 3.5 * 4.0 * pairs * D; }

}  // namespace moba::attn
