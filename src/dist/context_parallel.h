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
// This is the CPU reference: q, k, v, out and lse in host memory, run over the fake group
// (FakeGroup). The GPU path (the same protocol on device buffers over NCCL, with kernels
// for the packing and the attention) is not written.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

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

// MoBA forward of this rank's shard. `shard` is the shard's layout as one sequence of T_r
// tokens (Layout::batched(1, T_r, Hq, Hkv, D)); q, out (T_r, Hq, D), k, v (T_r, Hkv, D),
// lse (T_r, Hq) as in layout.h; the whole sequence is R x T_r tokens. Collective over
// `comm`: every rank calls it with its own shard. Throws moba::Error, on every rank, when
// a shard is not a whole number of blocks of S tokens, the shards differ in length, or the
// ranks' S, K, Hq, Hkv or D differ. An error on one rank only (a buffer size, a non-finite
// gate score) is thrown there, and the others fail at their next collective
// (communicator.h: FakeGroup::run releases them at once, NCCL after its timeout).
template <typename Real>
ContextParallelTraffic moba_forward_context_parallel(
    Communicator& comm, const attn::Layout& shard, const attn::MobaConfig& cfg,
    const attn::Options& opt, std::span<const Real> q, std::span<const Real> k,
    std::span<const Real> v, std::span<Real> out, std::span<Real> lse);

}  // namespace moba::dist
