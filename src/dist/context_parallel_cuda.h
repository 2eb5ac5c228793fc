// Context parallel's MoBA block fetch on the GPU (issue 14, section 2; docs/distributed.md,
// "The GPU path"): the protocol of context_parallel.h (the CPU reference) on device buffers,
// bf16, through a Communicator that takes device memory (NcclCommunicator, one rank per GPU;
// HostStagedCommunicator over the fake group, several ranks on one GPU for tests), reusing
// the single-GPU kernels. Per layer, rank r of R holding positions [r T_r, (r + 1) T_r) of
// one sequence:
//   1. the header (host all-gather of 6 int32): every rank checks that all shards are alike
//      and whole blocks, so that all fail with the same message;
//   2. the shard's block means, split in three bf16 terms (moba_gate_shard_means),
//      all-gathered in rank order = block order;
//   3. the shard's gate over all means (moba_gate_shard): block ids of the whole sequence,
//      bit for bit the whole sequence's moba_gate rows;
//   4. requests: the blocks of earlier ranks that any of the shard's queries selected (for
//      any head: the union over kv heads, so a block travels with all Hkv heads), as
//      ascending ids, grouped by owner; a host all-gather of the counts, then the ids by
//      all_to_all_v;
//   5. serving: each owner copies the asked blocks' K rows and V rows (S x Hkv x D each) into
//      two reply buffers; two all_to_all_v deliver them, in owner order = block order,
//      straight into the front of a **compact sequence**;
//   6. attention: the compact sequence is the F fetched blocks (after a few zero blocks that
//      round their number up to a multiple of b0 / 16, b0 the blocks before the shard, so
//      that its plan is reused from one forward to the next), then the shard; the selection is remapped block by block (a fetched block to its index among
//      the F, the shard's block j to F + j: order kept, the current block last), the F S
//      leading rows get q = 0 and their own block only, and moba_forward runs unchanged on
//      it; the shard's out and lse are its last T_r rows.
// The backward runs moba_backward on the same compact sequence with dout = 0 on the leading
// rows (they add nothing to any gradient); the shard's dq is its rows' dq; the leading rows'
// dk, dv are the fetched blocks' gradients, sent back to their owners by two reverse
// all_to_all_v and added there, in a fixed order (the owner's own, then each asking rank's
// in rank order) in fp32, rounded to bf16 once: the result does not depend on timing.
//
// Causality means a shard only ever fetches from earlier ranks; rank 0 fetches nothing and
// the last rank the most. Versus the CPU reference's per-(block, kv head) fetch this moves
// whole blocks (all kv heads), and holds a copy of q, k, v and out the size of the compact
// sequence for the backward.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "attention/layout.h"
#include "dist/communicator.h"
#include "dist/context_parallel.h"

namespace moba::attn::cuda {
class Plan;
}

namespace moba::dist::cuda {

using bf16 = __nv_bfloat16;

// What one rank's forward keeps for its backward, and its device scratch (reused from call to
// call; grown, never shrunk). One per MoBA layer that must be differentiated.
class MobaContextParallelState {
 public:
  MobaContextParallelState();
  ~MobaContextParallelState();
  MobaContextParallelState(const MobaContextParallelState&) = delete;
  MobaContextParallelState& operator=(const MobaContextParallelState&) = delete;

  bool filled() const { return ranks_ > 0; }
  // The last forward's selection of the shard's queries, (T_r, Hq, K) block ids of the
  // whole sequence (device memory; valid until the next forward).
  const int32_t* selection() const;
  // F: the blocks the last forward fetched from earlier ranks, ascending.
  const std::vector<int32_t>& fetched_blocks() const { return fetched_; }
  // Device bytes held (the compact sequence's copies, the replies, the plans' scratch).
  size_t device_bytes() const;

  struct Impl;  // the buffers (context_parallel_cuda.cu)

 private:
  friend ContextParallelTraffic moba_forward_context_parallel_cuda(
      Communicator&, const attn::Layout&, const attn::MobaConfig&, const attn::Options&,
      const bf16*, const bf16*, const bf16*, bf16*, float*, MobaContextParallelState&,
      cudaStream_t);
  friend ContextParallelTraffic moba_backward_context_parallel_cuda(
      Communicator&, MobaContextParallelState&, const bf16*, bf16*, bf16*, bf16*,
      cudaStream_t);
  attn::Layout shard_;
  attn::MobaConfig cfg_;
  int rank_ = -1, ranks_ = 0;  // the forward's; ranks_ = 0: never filled
  std::vector<int32_t> fetched_;            // fetched block ids, ascending
  std::vector<size_t> fetched_per_owner_;   // their number per owner rank
  std::vector<size_t> served_per_rank_;     // blocks served to each asking rank
  std::unique_ptr<Impl> impl_;
};

// MoBA forward of this rank's shard (shapes as attention_cuda.h, one sequence of T_r
// tokens: Layout::batched(1, T_r, Hq, Hkv, D)); every pointer is device memory on the current
// device, `stream` the one the kernels run on (synchronized before each collective, which
// returns complete). Collective over `comm` (device memory: NcclCommunicator or
// HostStagedCommunicator). Throws moba::Error on every rank when a shard is not whole blocks,
// the shards differ in length or the ranks' S, K, Hq, Hkv or D differ; an error on one rank
// only is thrown there and the others fail at their next collective. Fills `state` for the
// backward. opt.scale as in layout.h; the kernels' other options are the environment's.
ContextParallelTraffic moba_forward_context_parallel_cuda(
    Communicator& comm, const attn::Layout& shard, const attn::MobaConfig& cfg,
    const attn::Options& opt, const bf16* q, const bf16* k, const bf16* v, bf16* out,
    float* lse, MobaContextParallelState& state, cudaStream_t stream = nullptr);

// Gradients of sum(out * dout) over all ranks with respect to this rank's q, k, v, for the
// forward's selection (the gate has none): dq, dk, dv (the shard's shapes) are overwritten.
// q, k, v, out, lse are those `state` holds from the forward on this rank (its compact
// copies). Collective over the same group: two all_to_all_v (the fetched blocks' dK, then
// dV, back to their owners). Throws moba::Error when `state` was never filled or was filled
// on another rank or group size.
ContextParallelTraffic moba_backward_context_parallel_cuda(
    Communicator& comm, MobaContextParallelState& state, const bf16* dout, bf16* dq, bf16* dk,
    bf16* dv, cudaStream_t stream = nullptr);

}  // namespace moba::dist::cuda
