// A group of ranks that work on one model together: the operations data-parallel training
// (the gradient reduction, the parameter sync) and context parallelism (the block means'
// all-gather, the block fetch) need, and nothing more (docs/distributed.md). Two
// implementations: FakeGroup's in-process ranks (fake_communicator.h, CPU tests) and NCCL's
// (nccl_communicator.h, GPUs).
//
// Every operation except rank() and size() is collective: all ranks of the group must call
// it, in the same order, with the same element type, element count and root (all_to_all_v:
// counts that pair up, see there). A rank that does not (it died, hung, or took another
// path) is an error on the ranks that did: each implementation throws moba::Error within
// its timeout instead of waiting forever, and the group is unusable afterwards (every later
// call throws too); the job must stop. Calls return once the operation is complete on this
// rank: the buffer holds the result.
//
// Which memory a span may point to is the implementation's: host memory for the fake
// group, device memory (of the communicator's GPU) for NCCL. Send and receive buffers must
// not overlap.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "core/error.h"

namespace moba::dist {

// What a collective throws when the other ranks did not all come within the timeout (a
// rank died, hung, or is still busy elsewhere): the rank throwing it is waiting, not the
// culprit. `moba train` exits with code 4 on it, so that the launcher can tell the ranks
// left waiting from the one that failed (src/cli/launcher.h).
class CollectiveTimeout : public Error {
 public:
  explicit CollectiveTimeout(const std::string& what) : Error(what) {}
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;  // 0 .. size()-1
  virtual int size() const = 0;  // the number of ranks in the group

  // In place: data becomes the elementwise sum over the ranks' data (same length on all).
  virtual void all_reduce_sum(std::span<float> data) = 0;
  virtual void all_reduce_sum(std::span<double> data) = 0;
  // In place: every rank's data becomes rank `root`'s (same length on all).
  virtual void broadcast(std::span<float> data, int root) = 0;
  virtual void broadcast(std::span<double> data, int root) = 0;
  // Returns once every rank has called it.
  virtual void barrier() = 0;

  // Every rank's `send` (the same length n on all) concatenated in rank order: recv holds
  // size() x n elements, rank r's at [r n, (r + 1) n).
  virtual void all_gather(std::span<const float> send, std::span<float> recv) = 0;
  virtual void all_gather(std::span<const double> send, std::span<double> recv) = 0;
  virtual void all_gather(std::span<const int32_t> send, std::span<int32_t> recv) = 0;

  // Personalized exchange: `send` is size() runs in rank order, send_counts[p] elements for
  // rank p; `recv` receives size() runs in rank order, recv_counts[p] elements from rank p
  // (each counts span has size() entries and sums to its buffer's length). Counts may
  // differ between pairs and be 0, but must pair up: recv_counts[p] on rank r equals
  // send_counts[r] on rank p. The run a rank sends itself is copied.
  virtual void all_to_all_v(std::span<const float> send, std::span<const size_t> send_counts,
                            std::span<float> recv, std::span<const size_t> recv_counts) = 0;
  virtual void all_to_all_v(std::span<const double> send, std::span<const size_t> send_counts,
                            std::span<double> recv, std::span<const size_t> recv_counts) = 0;
  virtual void all_to_all_v(std::span<const int32_t> send, std::span<const size_t> send_counts,
                            std::span<int32_t> recv, std::span<const size_t> recv_counts) = 0;

  // all_reduce_sum and all_gather on small arrays in host memory, whatever memory the
  // implementation's other calls take (NCCL stages them through device memory): what the
  // trainer exchanges besides the gradients (the step's loss, the parameter checksums).
  virtual void all_reduce_sum_host(std::span<double> data) = 0;
  virtual void all_gather_host(std::span<const int32_t> send, std::span<int32_t> recv) = 0;
};

}  // namespace moba::dist
