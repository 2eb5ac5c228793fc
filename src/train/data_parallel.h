// Data-parallel training's glue between the trainer and a dist::Communicator
// (docs/distributed.md): which rows of a global batch a rank trains on and with what weight,
// the gradients' mean over the ranks (in buckets), and the check that every rank holds the
// same parameters.
//
// The data order is a function of the global batch alone: every rank asks the BatchSource
// for the same micro-batch index (the one a single process would read), keeps its rows and
// drops the others. So a run resumed on another number of ranks reads the same tokens in the
// same order; only the sums' roundings differ.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "dist/communicator.h"
#include "dist/grad_buckets.h"
#include "model/batch.h"
#include "model/params.h"

namespace moba::train {

// Rank `rank`'s rows of `global`: [rank B / world, (rank + 1) B / world), with their document
// boundaries (shifted to start at 0) and loss mask. B must be a multiple of world
// (moba::Error naming train.batch_size otherwise).
model::Batch rank_slice(const model::Batch& global, int rank, int world);

// The factor rank `rank` scales its slice's mean-loss gradient by, so that the ranks' sum
// divided by world is the gradient of the global batch's mean loss: world x c_r / C, with
// c_r the positions the slice counts and C the batch's (model::Batch::counted_positions).
// Exactly 1 without a loss mask (every slice counts B T / world positions). Every rank can
// compute every rank's factor: each holds the whole global batch.
double slice_weight(const model::Batch& global, int rank, int world);

// `--gpus N` of `moba train` and `moba sweep`, checked before any process starts (each
// throws moba::Error worded alike in both commands):
//  - the device: --gpus trains on GPUs, so a --device given must be cuda;
//  - the build: data parallel needs a CUDA build that found NCCL (built_with_nccl());
//  - the batch: train.batch_size rows split evenly over the N GPUs; `run` names the run
//    in the message when not empty (a sweep's).
bool built_with_nccl();
void check_gpus_device(int gpus, const std::string& device, bool device_given);
void check_gpus_build();
void check_gpus_batch(int gpus, int64_t batch_size, const std::string& run = "");

// FNV-1a 64 of the parameters' bytes: equal on two ranks iff their parameters are, bit for
// bit (up to a collision).
template <typename Real>
uint64_t params_checksum(std::span<const Real> params);

// Collective: gathers every rank's checksum and throws moba::Error on every rank when they
// differ, naming the step and the ranks whose parameters differ from rank 0's ("data
// parallel: step 4: the parameters differ across ranks (checksums: rank 0 ..., rank 1 ...);
// ranks 1 differ from rank 0"); `what` names the kind of group first.
void check_same_params(dist::Communicator& comm, uint64_t checksum, int64_t step,
                       const std::string& what = "data parallel");

// The gradients' mean over the ranks, bucket by bucket (dist::GradBuckets, one bucket of
// at most bucket_bytes per message), on host arrays laid out by a ParamLayout. With the
// fake group the result is, bit for bit, (g_0 + ... + g_{N-1}) / N in rank order.
class HostGradReducer {
 public:
  HostGradReducer(const model::ParamLayout& layout, size_t element_bytes, size_t bucket_bytes);
  template <typename Real>
  void reduce(dist::Communicator& comm, std::span<Real> grads);
  const dist::GradBuckets& buckets() const { return buckets_; }

 private:
  model::ParamLayout layout_;
  dist::GradBuckets buckets_;
};

}  // namespace moba::train
