#include "dist/grad_buckets.h"

#include <algorithm>

#include "core/error.h"

namespace moba::dist {

GradBuckets::GradBuckets(std::vector<size_t> sizes, size_t element_bytes, size_t cap_bytes)
    : sizes_(std::move(sizes)), element_bytes_(element_bytes), cap_bytes_(cap_bytes) {
  MOBA_CHECK(element_bytes == sizeof(float) || element_bytes == sizeof(double),
             "gradient buckets: element_bytes must be 4 (float) or 8 (double), got ",
             element_bytes);
  MOBA_CHECK(cap_bytes > 0, "gradient buckets: the bucket cap must be > 0 bytes");
  Bucket current;
  for (size_t i = sizes_.size(); i-- > 0;) {
    const size_t bytes = sizes_[i] * element_bytes;
    // Close the bucket when this tensor would overflow it; an empty bucket takes any
    // tensor, so one above the cap sits alone (the next one overflows it in turn).
    if (!current.params.empty() && current.bytes + bytes > cap_bytes) {
      buckets_.push_back(std::move(current));
      current = Bucket{};
    }
    current.params.push_back(i);
    current.elements += sizes_[i];
    current.bytes += bytes;
  }
  if (!current.params.empty()) buckets_.push_back(std::move(current));
}

template <typename Real>
void GradBuckets::reduce_impl(Communicator& comm, std::span<const std::span<Real>> grads,
                              std::vector<Real>& buffer) {
  MOBA_CHECK(sizeof(Real) == element_bytes_, "gradient buckets: built for ", element_bytes_,
             "-byte elements, reduce() got ", sizeof(Real), "-byte ones");
  MOBA_CHECK(grads.size() == sizes_.size(), "gradient buckets: built for ", sizes_.size(),
             " parameters, reduce() got ", grads.size());
  for (size_t i = 0; i < sizes_.size(); ++i)
    MOBA_CHECK(grads[i].size() == sizes_[i], "gradient buckets: parameter ", i, " has ",
               grads[i].size(), " gradient elements, expected ", sizes_[i]);
  const Real world = static_cast<Real>(comm.size());
  for (const Bucket& b : buckets_) {
    buffer.resize(std::max(buffer.size(), b.elements));
    Real* flat = buffer.data();
    size_t at = 0;
    for (size_t p : b.params) {
      std::copy(grads[p].begin(), grads[p].end(), flat + at);
      at += grads[p].size();
    }
    comm.all_reduce_sum(std::span<Real>(flat, b.elements));
    at = 0;
    for (size_t p : b.params) {
      for (Real& g : grads[p]) g = flat[at++] / world;
    }
  }
}

void GradBuckets::reduce(Communicator& comm, std::span<const std::span<float>> grads) {
  reduce_impl(comm, grads, buffer_f_);
}
void GradBuckets::reduce(Communicator& comm, std::span<const std::span<double>> grads) {
  reduce_impl(comm, grads, buffer_d_);
}

}  // namespace moba::dist
