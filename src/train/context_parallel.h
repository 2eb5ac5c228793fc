// Context-parallel training's glue between the trainer and the CPU model's context parallel
// (Model::set_context_parallel; docs/distributed.md, "In the trainer"): the checks a run
// must pass before it starts, which positions of a global micro-batch's row a rank trains
// on and with what weight, and the validation forward over the group.
//
// As with data parallel, the data order is a function of the global batch alone: every rank
// of the group asks the BatchSource for the same micro-batch index a single process reads,
// and trains, row after row, on its shard of each row. So a run resumed on another number of
// ranks (or on one process) reads the same tokens in the same order.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "dist/communicator.h"
#include "model/batch.h"
#include "model/model.h"
#include "train/config.h"

namespace moba::train {

// Can `cfg` train context parallel over `ranks` ranks on `device`? Checked by `moba train
// --context-parallel R` before the ranks start, and by every rank's Trainer before it
// allocates or writes anything; throws moba::Error naming the problem:
//  - ranks >= 1;
//  - data_parallel (a group for data parallel too): not supported yet;
//  - device "cuda" with R > 1: every layer must run MoBA in every step (the GPU model's
//    context parallel has no ring attention for full layers yet);
//  - model.seq_len a multiple of R (rank r holds positions [r T / R, (r + 1) T / R) of every
//    row), and of R x attention.block_size when a layer ever runs MoBA (every rank holds
//    whole MoBA blocks);
//  - data_packing = "packed": rows of several documents, which a shard cannot hold.
void check_context_parallel(const RunConfig& cfg, int ranks, const std::string& device,
                            bool data_parallel);

// What one rank of a context-parallel run on GPUs holds at a time, for the memory check
// (train/supports.h): `cfg` with model.seq_len = seq_len / ranks and train.batch_size = 1
// (a rank trains one row's shard at a time, on its own GPU). The compact sequence of the
// block fetch (dist/context_parallel_cuda.h: up to twice the shard's attention tensors more)
// is not in the estimate. ranks = 1, or device "cpu" (all ranks share the machine): `cfg`.
RunConfig context_parallel_rank_config(const RunConfig& cfg, int ranks, const std::string& device);

// Throws moba::Error naming the step, the micro-batch and the row when a row of `global`
// holds several documents (cu_seqlens inside it: context parallel trains one document per
// row), or when the batch's loss mask counts no position. Every rank holds the same global
// batch, so every rank throws alike, before any collective.
void check_context_parallel_batch(const model::Batch& global, int64_t step, uint64_t index);

// Rank `rank`'s shard of row `row` of `global` (one document per row): B = 1, T_r = T /
// ranks inputs at positions [rank T_r, (rank + 1) T_r) of the row, their targets (T_r + 1
// tokens) and that part of the loss mask; no cu_seqlens. T must be a multiple of ranks.
model::Batch row_shard(const model::Batch& global, int64_t row, int rank, int ranks);

// The weight of row `row` in the gradient of the batch's mean loss: c_b / C, with c_b the
// positions the row counts and C the batch's (model::Batch::counted_positions); 1 / B
// without a loss mask. The model's context-parallel backward gives the gradient of the
// row's own mean loss (summed over the ranks), so the rows' gradients weighted so add up to
// the batch's. C must be > 0.
double row_weight(const model::Batch& global, int64_t row);

// Collective: the per-token losses (B*T, row after row) of `batch`'s B rows, each row run
// through `model`'s context-parallel forward (model.context_parallel() must be `comm`) on
// this rank's shard and the ranks' T_r losses all-gathered in rank order: the same (B*T) on
// every rank. What validation runs under context parallel.
std::vector<float> context_parallel_token_losses(model::Model<float>& model,
                                                 std::span<const float> params,
                                                 const model::Batch& batch, bool moba_phase,
                                                 dist::Communicator& comm);

}  // namespace moba::train
