// The attention sub-layer of a block: q, k, v projections (GQA: Hkv <= Hq heads of k, v),
// RoPE on q and k, dense causal or MoBA attention (attention_blas.h, checked against the
// reference of src/attention), output projection. MoBA's gate selects blocks from the
// rotated q and k, as the reference implementation does; it has no gradient.
//
// Under context parallel (Model::set_context_parallel; docs/distributed.md) the layout is
// this rank's shard, one sequence of T_r tokens at global positions [r T_r, (r + 1) T_r),
// and the attention itself is collective over the group: MoBA through the block fetch
// (dist/context_parallel.h), dense through ring attention (dist/ring_attention.h), each
// keeping its saved state in the cache from the forward to the backward. A group of one
// rank takes the single-process path, so that it is the plain layer bit for bit.
#pragma once

#include <cstdint>
#include <vector>

#include "attention/gate.h"
#include "attention/layout.h"
#include "dist/communicator.h"
#include "dist/context_parallel.h"
#include "dist/ring_attention.h"
#include "model/rope.h"

namespace moba::model {

// What the backward needs from the forward.
template <typename Real>
struct AttentionCache {
  std::vector<Real> q;    // (M, Hq, D) after RoPE
  std::vector<Real> k;    // (M, Hkv, D) after RoPE
  std::vector<Real> v;    // (M, Hkv, D)
  std::vector<Real> out;  // (M, Hq, D) attention output, before W_o
  std::vector<Real> lse;  // (M, Hq)
  bool moba = false;
  attn::Selection sel;       // MoBA only: the selection attended
  attn::Selection gate_sel;  // MoBA with a forced selection only: what the gate chose instead
  double pairs = 0.0;        // (query, key) pairs attended, all heads
  // Context parallel over two or more ranks only (`cp` given to the forward): which saved
  // state the backward uses (MoBA's block fetch, or the ring for a dense layer).
  bool context_parallel = false;
  dist::ContextParallelSaved<Real> cp_moba;
  dist::RingSaved cp_ring;
};

struct AttentionWeights {
  size_t wq, wk, wv, wo;  // offsets in the flat parameter array (see params.h)
};

// xn (M, C) -> y (M, C). `moba` null means dense causal attention. pos (M) = RoPE positions.
// `forced` (MoBA only; tests): attend this selection instead of running the gate, e.g. the
// GPU's, whose bf16 gate may break near-ties differently (Model::force_selections checks it).
// `cp` (context parallel): the group the shard `layout` (one sequence, rank r's T_r tokens,
// pos its global positions r T_r + t) belongs to; collective over it when it has two or
// more ranks, and then `forced` must be null. MoBA's selection then holds block ids of the
// whole sequence.
template <typename Real>
void attention_forward(const attn::Layout& layout, const attn::MobaConfig* moba,
                       const RopeTable& rope, const int32_t* pos, int64_t C, const Real* params,
                       AttentionWeights w, const Real* xn, Real* y, AttentionCache<Real>& cache,
                       const attn::Selection* forced = nullptr, dist::Communicator* cp = nullptr);

// dy (M, C) -> dxn (M, C) (overwritten); weight gradients added into grads (flat array).
// `cp`: the forward's group (collective again when the forward was).
template <typename Real>
void attention_backward(const attn::Layout& layout, const attn::MobaConfig* moba,
                        const RopeTable& rope, const int32_t* pos, int64_t C, const Real* params,
                        AttentionWeights w, const Real* xn, const AttentionCache<Real>& cache,
                        const Real* dy, Real* dxn, Real* grads, dist::Communicator* cp = nullptr);

}  // namespace moba::model
