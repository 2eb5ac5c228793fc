// Context parallelism for MoBA (issue 14, section 2; docs/distributed.md, "Context
// parallel"): one sequence too long for one device is split over the ranks of a group in
// contiguous shards of whole MoBA blocks, rank r holding positions [r T_r, (r + 1) T_r), its
// queries, keys and values. Each rank computes MoBA's forward for its own queries and
// fetches from the other ranks only the K/V blocks those queries selected:
//   1. a header all-gather: every rank checks that all shards are alike and whole blocks;
//   2. each rank's block means (gate.h's block_means of its shard), all-gathered;
//   3. the gate for its queries (gate.h's moba_gate_part) over all the means;
//   4. the (block, kv head) pairs its queries selected on other ranks, requested from their
//      owners (a count all-gather, then the ids by all_to_all_v);
//   5. the owners answer with those blocks' K and V rows (all_to_all_v), nothing else;
//   6. attention over the selected blocks (attend_row.h's row), the current block and the
//      shard's own past blocks read in place.
// The arithmetic is the CPU reference's own, in the same order: each rank's out and lse are
// bit for bit the rows of its shard from attn::cpu::moba_forward over the whole sequence
// with moba_gate's selection.
//
// The backward (moba_backward_context_parallel) reuses the forward's selection and fetched
// K/V, kept in a ContextParallelSaved: dq of the rank's queries through the same local and
// fetched blocks; dk, dv of the fetched blocks computed where they were fetched and sent
// back to their owners by the reverse all_to_all_v, the owner adding them to its own in a
// fixed order. The gate has no gradient (docs/moba.md), as on one process.
//
// This is the CPU reference: q, k, v, out and lse in host memory, run over the fake group
// (FakeGroup). The GPU path, the same protocol on device buffers over a device-memory
// communicator, is dist/context_parallel_cuda.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "attention/layout.h"
#include "dist/communicator.h"

namespace moba::dist {

// What one call moved between this rank and the others, in bytes as they travel (the
// rank's part of a copy to itself is not counted). Sent and received are counted at this
// rank: summed over the ranks, sent equals received for each kind.
struct ContextParallelTraffic {
  // K/V: blocks_fetched (block, kv head) pairs received, blocks_served sent; each is S rows
  // of K and S rows of V of D elements.
  int64_t blocks_fetched = 0, blocks_served = 0;
  size_t kv_received = 0, kv_sent = 0;
  // The fp32 block means' all-gather: (R - 1) shards of (T_r / S, Hkv, D) each way.
  size_t means_received = 0, means_sent = 0;
  // int32 bookkeeping: the header and request-count all-gathers, the requested ids.
  size_t control_received = 0, control_sent = 0;
};

// Tokens per rank of a sequence of T tokens split over R ranks in whole blocks of S:
// T / R. Throws moba::Error naming T, R and S when T is not a multiple of R x S.
int64_t context_parallel_shard_tokens(int64_t T, int ranks, int64_t block_size);

// What the backward needs from one rank's forward (as attn::cpu::moba_backward needs out and
// lse): the selection, the fetch's bookkeeping and the fetched K/V, held from the forward to
// the backward: U_r x 2 S D elements for U_r fetched (block, kv head) pairs.
template <typename Real>
struct ContextParallelSaved {
  attn::Layout shard;  // the forward's, one sequence of T_r tokens
  attn::MobaConfig cfg;
  double scale = 0.0;     // the softmax scale the forward used
  int rank = -1, ranks = 0;  // the forward's communicator; ranks = 0: not filled
  // (T_r, Hq, K) block ids in the whole sequence, ascending, -1 padding.
  std::vector<int32_t> sel;
  // Fetched pairs, id block x Hkv + kv head, ascending (so grouped by owner in rank order),
  // their number per owner, and their K/V: per pair S key rows then S value rows of D.
  std::vector<int32_t> fetched_ids;
  std::vector<size_t> fetched_per_owner;
  std::vector<Real> fetched;
  // Pairs this rank served, as received: by asking rank, then in that rank's order; their
  // number per asking rank.
  std::vector<int32_t> served_ids;
  std::vector<size_t> served_per_rank;
};

// MoBA forward of this rank's shard. `shard` is the shard's layout as one sequence of T_r
// tokens (Layout::batched(1, T_r, Hq, Hkv, D)); q, out (T_r, Hq, D), k, v (T_r, Hkv, D),
// lse (T_r, Hq) as in layout.h; the whole sequence is R x T_r tokens. Collective over
// `comm`: every rank calls it with its own shard. Throws moba::Error, on every rank, when
// a shard is not a whole number of blocks of S tokens, the shards differ in length, or the
// ranks' S, K, Hq, Hkv or D differ. An error on one rank only (a buffer size, a non-finite
// gate score) is thrown there, and the others fail at their next collective
// (communicator.h: FakeGroup::run releases them at once, NCCL after its timeout).
// `saved`, when given, is overwritten with what the backward needs.
template <typename Real>
ContextParallelTraffic moba_forward_context_parallel(
    Communicator& comm, const attn::Layout& shard, const attn::MobaConfig& cfg,
    const attn::Options& opt, std::span<const Real> q, std::span<const Real> k,
    std::span<const Real> v, std::span<Real> out, std::span<Real> lse,
    ContextParallelSaved<Real>* saved = nullptr);

// Gradients of sum(out * dout) over all ranks with respect to this rank's q, k and v, for
// the forward's selection (the gate has none); dq, dk, dv (the shard's shapes) are
// overwritten. q, k, v, out, lse are the forward's, `saved` what it filled on this rank.
// Collective over the same group: one all_to_all_v, each rank sending back the dK, dV of
// the pairs it fetched (per pair S rows of dK then S of dV, in the element type) and
// adding those it receives to its own, in a fixed order: its own queries' contributions,
// then each asking rank's in rank order, each rank's pairs in its request order; so the
// result does not depend on timing. The traffic counts the pairs as the forward did
// (blocks_fetched: pairs whose gradients this rank sends back), kv_sent the gradients sent,
// kv_received those received; no means, no bookkeeping. Throws moba::Error when `saved` is
// empty or from another rank or group size, or a buffer does not match its shard.
template <typename Real>
ContextParallelTraffic moba_backward_context_parallel(
    Communicator& comm, const ContextParallelSaved<Real>& saved, std::span<const Real> q,
    std::span<const Real> k, std::span<const Real> v, std::span<const Real> out,
    std::span<const Real> lse, std::span<const Real> dout, std::span<Real> dq,
    std::span<Real> dk, std::span<Real> dv);

}  // namespace moba::dist
