// The data-parallel gradient reduction on GPUs (CUDA builds with NCCL): the gradient buckets
// of data_parallel.h, each one contiguous range of the model's flat fp32 gradient array,
// all-reduced in place by NCCL on the communicator's stream while the backward goes on.
//
// arm() before the step's last micro-batch: ModelCuda's backward then reports (its grad-ready
// hook) each time the gradients of the layers it has finished are enqueued; every bucket lying
// wholly in that range is launched at once, after an event on the model's stream (so the
// all-reduce starts when those kernels are done, the backward of earlier layers running
// meanwhile). finish() after the backward launches what is left, waits for all buckets (with
// the communicator's timeout) and disarms. The ranks' sum is the mean because each rank's
// loss scale already holds 1 / world (the trainer's), so nothing is divided afterwards.
#pragma once

#include <cstddef>
#include <vector>

#include "dist/grad_buckets.h"
#include "dist/nccl_communicator.h"
#include "model/cuda/model_cuda.h"

namespace moba::train {

class DeviceGradReducer {
 public:
  DeviceGradReducer(dist::NcclCommunicator& comm, model::cuda::ModelCuda& model,
                    size_t bucket_bytes);
  ~DeviceGradReducer();
  DeviceGradReducer(const DeviceGradReducer&) = delete;
  DeviceGradReducer& operator=(const DeviceGradReducer&) = delete;

  void arm();
  void finish();
  size_t buckets() const { return ranges_.size(); }

 private:
  struct Range {
    size_t lo, hi;  // flat elements [lo, hi)
  };
  void ready(size_t first, cudaStream_t stream);

  dist::NcclCommunicator& comm_;
  model::cuda::ModelCuda& model_;
  float* grads_;
  std::vector<Range> ranges_;  // in launch order: the last layers' first
  size_t launched_ = 0;        // ranges_[0, launched_) are enqueued
  std::vector<cudaEvent_t> events_;  // one per hook call that launches: at most one per bucket
  size_t events_used_ = 0;
};

}  // namespace moba::train
