#include "train/data_parallel.h"

#include <algorithm>
#include <sstream>
#include <vector>

#include "core/error.h"
#include "data/hash.h"

namespace moba::train {

bool built_with_nccl() {
#ifdef MOBA_WITH_NCCL
  return true;
#else
  return false;
#endif
}

void check_gpus_device(int gpus, const std::string& device, bool device_given) {
  MOBA_CHECK(!device_given || device == "cuda", "--gpus ", gpus, " trains on GPUs: --device ",
             device, " contradicts it (leave --device out)");
}

void check_gpus_build() {
  MOBA_CHECK(built_with_nccl(), "--gpus: this build of moba has no NCCL (data-parallel "
             "training needs a CUDA build that found NCCL; docs/distributed.md)");
}

void check_gpus_batch(int gpus, int64_t batch_size, const std::string& run) {
  MOBA_CHECK(batch_size % gpus == 0, "--gpus ", gpus, ": ", run.empty() ? "" : "run " + run + ": ",
             "train.batch_size = ", batch_size, " rows cannot be split evenly over ", gpus,
             " GPUs; choose a batch size that is a multiple of the number of GPUs");
}

model::Batch rank_slice(const model::Batch& global, int rank, int world) {
  MOBA_CHECK(world >= 1 && rank >= 0 && rank < world, "data parallel: rank ", rank,
             " outside a group of ", world);
  MOBA_CHECK(global.B % world == 0, "data parallel: train.batch_size = ", global.B,
             " rows cannot be split evenly over ", world,
             " ranks; choose a batch size that is a multiple of the number of GPUs");
  if (world == 1) return global;
  const int64_t rows = global.B / world, T = global.T;
  const int64_t r0 = rank * rows, r1 = r0 + rows;
  model::Batch b;
  b.B = rows;
  b.T = T;
  const auto row_tokens = static_cast<ptrdiff_t>(T + 1);
  b.tokens.assign(global.tokens.begin() + r0 * row_tokens, global.tokens.begin() + r1 * row_tokens);
  if (!global.cu_seqlens.empty())
    for (int64_t x : global.cu_seqlens)
      if (x >= r0 * T && x <= r1 * T) b.cu_seqlens.push_back(x - r0 * T);
  if (!global.loss_mask.empty())
    b.loss_mask.assign(global.loss_mask.begin() + r0 * T, global.loss_mask.begin() + r1 * T);
  return b;
}

double slice_weight(const model::Batch& global, int rank, int world) {
  if (global.loss_mask.empty()) return 1.0;
  const int64_t total = global.counted_positions();
  MOBA_CHECK(total > 0, "data parallel: the batch's loss mask counts no position");
  const int64_t mine = rank_slice(global, rank, world).counted_positions();
  return static_cast<double>(world) * static_cast<double>(mine) / static_cast<double>(total);
}

template <typename Real>
uint64_t params_checksum(std::span<const Real> params) {
  return data::fnv1a64(params.data(), params.size_bytes());
}
template uint64_t params_checksum<float>(std::span<const float>);
template uint64_t params_checksum<double>(std::span<const double>);

void check_same_params(dist::Communicator& comm, uint64_t checksum, int64_t step,
                       const std::string& what) {
  const int n = comm.size();
  const int32_t mine[2] = {static_cast<int32_t>(checksum & 0xffffffffu),
                           static_cast<int32_t>(checksum >> 32)};
  std::vector<int32_t> all(2 * static_cast<size_t>(n));
  comm.all_gather_host(mine, all);
  std::vector<uint64_t> sums(static_cast<size_t>(n));
  for (size_t r = 0; r < sums.size(); ++r)
    sums[r] = static_cast<uint64_t>(static_cast<uint32_t>(all[2 * r])) |
              (static_cast<uint64_t>(static_cast<uint32_t>(all[2 * r + 1])) << 32);
  std::string differ;
  for (size_t r = 1; r < sums.size(); ++r)
    if (sums[r] != sums[0]) differ += (differ.empty() ? "" : ", ") + std::to_string(r);
  if (differ.empty()) return;
  std::ostringstream os;
  os << what << ": step " << step
     << ": the parameters differ across ranks (checksums:";
  for (size_t r = 0; r < sums.size(); ++r)
    os << (r ? ", " : " ") << "rank " << r << ' ' << data::hex64(sums[r]);
  os << "); rank(s) " << differ
     << " differ from rank 0. Every rank should have taken the same optimizer step: the job "
        "stopped, the last checkpoint (rank 0's) is intact";
  throw Error(os.str());
}

namespace {
std::vector<size_t> tensor_sizes(const model::ParamLayout& layout) {
  std::vector<size_t> sizes;
  for (const model::TensorInfo& t : layout.tensors) sizes.push_back(t.size);
  return sizes;
}
}  // namespace

HostGradReducer::HostGradReducer(const model::ParamLayout& layout, size_t element_bytes,
                                 size_t bucket_bytes)
    : layout_(layout), buckets_(tensor_sizes(layout), element_bytes, bucket_bytes) {}

template <typename Real>
void HostGradReducer::reduce(dist::Communicator& comm, std::span<Real> grads) {
  MOBA_CHECK(grads.size() == layout_.total, "data parallel: ", grads.size(),
             " gradient elements for a model of ", layout_.total);
  std::vector<std::span<Real>> spans;
  spans.reserve(layout_.tensors.size());
  for (const model::TensorInfo& t : layout_.tensors) spans.emplace_back(grads.data() + t.offset, t.size);
  buckets_.reduce(comm, std::span<const std::span<Real>>(spans));
}
template void HostGradReducer::reduce<float>(dist::Communicator&, std::span<float>);
template void HostGradReducer::reduce<double>(dist::Communicator&, std::span<double>);

}  // namespace moba::train
