// The check every rank of a context-parallel model (Model::set_context_parallel on the CPU,
// ModelCuda::set_context_parallel on the GPU; docs/distributed.md) makes before a forward:
// the ranks all-gather a small header and each checks all of them, so that every rank fails
// with the same message.
#pragma once

#include <cstdint>

#include "dist/communicator.h"
#include "model/batch.h"

namespace moba::model {

// Collective (all_gather_host of 5 int32 per rank: B, T_r, documents in the shard,
// `forced`, counted positions). Throws moba::Error, on every rank alike: a rank's batch of
// B != 1 rows, a shard of several documents (packed documents are not supported), `forced`
// set (force_selections is not supported under context parallel), shards of different
// lengths, a shard not of whole blocks of `block_size` when `any_moba`, the whole sequence
// longer than `seq_len`, and no counted position on any rank. Returns all ranks' counted
// positions (the loss's denominator).
int64_t check_context_parallel_shards(dist::Communicator& comm, const Batch& batch,
                                      int64_t local_counted, bool forced, bool any_moba,
                                      int64_t block_size, int64_t seq_len);

}  // namespace moba::model
