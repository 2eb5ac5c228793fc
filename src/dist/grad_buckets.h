// Gradient buckets of data-parallel training: the gradients are all-reduced in a few large
// messages (one per bucket) rather than one per tensor (too many small calls) or one for
// the whole model (nothing to overlap with the backward pass).
//
// Buckets are formed in the reverse order of the parameter list, because the backward pass
// produces gradients roughly last layer first: the first bucket is complete earliest and can
// be reduced while the backward computes the rest (the overlap waits for the trainer
// integration; reduce() below runs after the backward). A bucket holds consecutive
// parameters (in that reverse order) up to cap_bytes; a parameter larger than the cap gets
// a bucket of its own.
#pragma once

#include <cstddef>
#include <span>
#include <vector>

#include "dist/communicator.h"

namespace moba::dist {

struct Bucket {
  std::vector<size_t> params;  // indices into the parameter list, in reduction order
  size_t elements = 0;         // their sizes summed
  size_t bytes = 0;            // elements * element_bytes
};

class GradBuckets {
 public:
  // sizes: elements of each parameter tensor, in the model's order; element_bytes: 4
  // (float) or 8 (double); cap_bytes > 0.
  GradBuckets(std::vector<size_t> sizes, size_t element_bytes, size_t cap_bytes);

  const std::vector<Bucket>& buckets() const { return buckets_; }
  const std::vector<size_t>& sizes() const { return sizes_; }

  // Collective: replaces every rank's gradients with their mean over the ranks. grads holds
  // one span per parameter (same order and sizes as the constructor's; the element type
  // must match element_bytes, moba::Error otherwise). Bucket by bucket: pack the bucket's
  // tensors into one flat buffer, all_reduce_sum it, unpack each element divided by the
  // world size (a division, not a product with 1/size: one rounding, where the product
  // has two unless the size is a power of two). With the fake communicator the result is, bit for
  // bit, (g_0 + g_1 + ... + g_{N-1}) / N in rank order.
  void reduce(Communicator& comm, std::span<const std::span<float>> grads);
  void reduce(Communicator& comm, std::span<const std::span<double>> grads);

 private:
  template <typename Real>
  void reduce_impl(Communicator& comm, std::span<const std::span<Real>> grads,
                   std::vector<Real>& buffer);

  std::vector<size_t> sizes_;
  size_t element_bytes_;
  size_t cap_bytes_;
  std::vector<Bucket> buckets_;
  std::vector<float> buffer_f_;  // the flat buffer of the largest bucket, reused
  std::vector<double> buffer_d_;
};

}  // namespace moba::dist
