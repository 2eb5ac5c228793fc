// A group of ranks that train one model together (data parallel, docs/distributed.md):
// the operations the gradient reduction and the parameter sync need, and nothing more.
// Two implementations: FakeGroup's in-process ranks (fake_communicator.h, CPU tests) and
// NCCL's (nccl_communicator.h, GPUs).
//
// Every operation except rank() and size() is collective: all ranks of the group must call
// it, in the same order, with the same element type, element count and root. A rank that
// does not (it died, hung, or took another path) is an error on the ranks that did: each
// implementation throws moba::Error within its timeout instead of waiting forever, and the
// group is unusable afterwards (every later call throws too); the job must stop. Calls
// return once the operation is complete on this rank: the buffer holds the result.
//
// Which memory a span may point to is the implementation's: host memory for the fake
// group, device memory (of the communicator's GPU) for NCCL.
#pragma once

#include <span>

namespace moba::dist {

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
};

}  // namespace moba::dist
