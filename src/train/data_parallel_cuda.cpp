#include "train/data_parallel_cuda.h"

#include "core/cuda_check.cuh"
#include "core/error.h"

namespace moba::train {

DeviceGradReducer::DeviceGradReducer(dist::NcclCommunicator& comm, model::cuda::ModelCuda& model,
                                     size_t bucket_bytes)
    : comm_(comm), model_(model), grads_(model.device_grads()) {
  const model::ParamLayout& layout = model.layout();
  std::vector<size_t> sizes;
  for (const model::TensorInfo& t : layout.tensors) sizes.push_back(t.size);
  const dist::GradBuckets buckets(sizes, sizeof(float), bucket_bytes);
  for (const dist::Bucket& b : buckets.buckets()) {
    // Consecutive tensors in reverse order: one contiguous range of the flat array.
    const model::TensorInfo& last = layout.tensors[b.params.front()];
    const model::TensorInfo& first = layout.tensors[b.params.back()];
    MOBA_CHECK(last.offset + last.size - first.offset == b.elements,
               "internal: gradient bucket of ", first.name, " .. ", last.name,
               " is not contiguous in the parameter layout");
    ranges_.push_back({first.offset, last.offset + last.size});
  }
  events_.resize(ranges_.size(), nullptr);
  for (cudaEvent_t& e : events_) CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
}

DeviceGradReducer::~DeviceGradReducer() {
  model_.set_grad_ready_hook({});
  for (cudaEvent_t e : events_)
    if (e) cudaEventDestroy(e);
}

void DeviceGradReducer::arm() {
  launched_ = 0;
  events_used_ = 0;
  model_.set_grad_ready_hook([this](size_t first, cudaStream_t s) { ready(first, s); });
}

void DeviceGradReducer::ready(size_t first, cudaStream_t stream) {
  if (launched_ == ranges_.size() || ranges_[launched_].lo < first) return;  // none complete
  MOBA_CHECK(events_used_ < events_.size(), "internal: more bucket launches than buckets");
  cudaEvent_t e = events_[events_used_++];
  CUDA_CHECK(cudaEventRecord(e, stream));
  for (; launched_ < ranges_.size() && ranges_[launched_].lo >= first; ++launched_) {
    const Range& r = ranges_[launched_];
    comm_.all_reduce_sum_async(std::span<float>(grads_ + r.lo, r.hi - r.lo), e);
  }
}

void DeviceGradReducer::finish() {
  model_.set_grad_ready_hook({});
  if (launched_ < ranges_.size()) ready(0, model_.stream());  // a backward without the hook
  comm_.wait_pending();
}

}  // namespace moba::train
