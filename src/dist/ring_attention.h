// Ring attention for a hybrid model's full-attention layers under context parallelism
// (issue 14, section 2; docs/distributed.md, "Ring attention for full layers"): the
// sequence is split over the R ranks of a group in the same contiguous shards as MoBA's
// block fetch (context_parallel.h: rank r holds positions [r T_r, (r + 1) T_r),
// T_r = context_parallel_shard_tokens(T, R, S), so a hybrid model shards once; whole
// tokens are enough here, S = 1 gives that rule for a model without MoBA layers). Causal
// dense attention needs, for rank r's queries, the K/V of shards 0 .. r.
//
// The forward, per rank, all collective:
//   1. a header all-gather: every rank checks that all shards are alike;
//   2. step 0: its queries against its own shard's K/V with the causal mask;
//   3. steps s = 1 .. R - 1: each rank passes the K/V shard it holds to its successor and
//      receives its predecessor's (one all_to_all_v per step in which a rank sends only to
//      rank + 1: the Communicator has no point-to-point call), so that at step s rank r
//      holds shard r - s, which all its queries see in full. Causality prunes the ring: a
//      shard is passed on only while a later rank still needs it (shard j travels
//      j -> j + 1 -> ... -> R - 1, never wrapping to rank 0), so rank r receives exactly the
//      r shards before its own and rank R - 1 sends nothing.
// Per (query, head) row a running (max, sum, accumulator) in double is merged step by step,
// in arrival order: the own shard first, then shards r - 1, r - 2, ..., 0. That order is
// fixed by the protocol, not by timing, so the result is deterministic; with one rank it is
// attn::cpu::dense_forward's row arithmetic exactly (bit for bit); with more ranks the same
// terms in another grouping (equal within rounding).
//
// The backward (dense_backward_context_parallel) passes the K/V around the same pruned
// ring again, with their dK, dV travelling alongside: each rank adds its queries'
// contributions to the shard it holds (and to its own dq) before passing it on; the last
// rank (R - 1) returns each finished dK, dV to its owner, one step later, in the same
// all_to_all_v. A shard's gradient is therefore summed in a fixed order: its owner's
// queries, then ranks j + 1, ..., R - 1, rounded to the element type between hops.
//
// Load balance: with contiguous shards rank r attends to r + 1 shards, the last R times as
// many as rank 0; counting the own, causally masked shard as half, rank r's score work is
// r + 1/2 shards, the last rank's 2R - 1 times rank 0's and (2R - 1) / R (about twice) the
// mean's, and every ring step waits for it. Zig-zag sharding (each rank a chunk from each
// end of the sequence) balances it; not done.
//
// This is the CPU reference: tensors in host memory, over the fake group (FakeGroup). The
// GPU path over NCCL is not written.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "attention/layout.h"
#include "dist/communicator.h"

namespace moba::dist {

// What one call moved between this rank and the others, in bytes as they travel. Summed
// over the ranks, sent equals received for each kind.
struct RingTraffic {
  // K/V shards (the forward: T_r x Hkv x D of K then of V; the backward: K, V, dK, dV)
  // passed on to the successor and received from the predecessor.
  int64_t shards_sent = 0, shards_received = 0;
  size_t kv_sent = 0, kv_received = 0;
  // The backward: finished dK, dV returned by rank R - 1 to their owners.
  int64_t grads_returned = 0, grads_received = 0;
  size_t grad_sent = 0, grad_received = 0;
  // int32 header all-gather (the forward only).
  size_t control_sent = 0, control_received = 0;
};

// What the backward needs from one rank's forward besides out and lse (which the caller
// keeps, as attn::cpu::dense_backward needs them): the shapes and the group. No K/V is
// kept; the backward passes it around the ring again.
struct RingSaved {
  attn::Layout shard;  // the forward's, one sequence of T_r tokens
  double scale = 0.0;  // the softmax scale the forward used
  int rank = -1, ranks = 0;  // the forward's communicator; ranks = 0: not filled
};

// Causal dense attention of this rank's shard over the whole sequence. `shard` is the
// shard's layout as one sequence of T_r tokens (Layout::batched(1, T_r, Hq, Hkv, D)); q, out
// (T_r, Hq, D), k, v (T_r, Hkv, D), lse (T_r, Hq) as in layout.h; the whole sequence is
// R x T_r tokens. Collective over `comm`: every rank calls it with its own shard. Throws
// moba::Error, on every rank, when the shards differ in length or the ranks' Hq, Hkv or D
// differ. An error on one rank only (a buffer size) is thrown there, and the others fail at
// their next collective. `saved`, when given, is overwritten with what the backward needs.
template <typename Real>
RingTraffic dense_forward_context_parallel(Communicator& comm, const attn::Layout& shard,
                                           const attn::Options& opt, std::span<const Real> q,
                                           std::span<const Real> k, std::span<const Real> v,
                                           std::span<Real> out, std::span<Real> lse,
                                           RingSaved* saved = nullptr);

// Gradients of sum(out * dout) over all ranks with respect to this rank's q, k and v; dq,
// dk, dv (the shard's shapes) are overwritten. q, k, v, out, lse are the forward's, `saved`
// what it filled on this rank. Collective over the same group: with R >= 2 ranks, R
// all_to_all_v calls (R - 1 ring steps, from step 2 each also carrying the finished
// gradient of one shard from rank R - 1 to its owner, then one last return; none with one
// rank). Throws moba::Error when `saved` is empty or from another
// rank or group size, or a buffer does not match its shard.
template <typename Real>
RingTraffic dense_backward_context_parallel(Communicator& comm, const RingSaved& saved,
                                            std::span<const Real> q, std::span<const Real> k,
                                            std::span<const Real> v, std::span<const Real> out,
                                            std::span<const Real> lse,
                                            std::span<const Real> dout, std::span<Real> dq,
                                            std::span<Real> dk, std::span<Real> dv);

}  // namespace moba::dist
