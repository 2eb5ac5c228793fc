// N ranks in one process, one thread each, for testing the data-parallel code on a CPU: a
// FakeGroup owns N communicators that meet at every collective call (a rendezvous).
//
// Deterministic: all_reduce_sum adds the ranks' buffers in rank order, ((r0 + r1) + r2)
// + ..., in the element type, whichever thread arrives last; so a test can reproduce the
// sum bit for bit. all_gather and all_to_all_v only copy.
//
// Failure: a rank that waits longer than the group's timeout for the others throws
// moba::Error naming the ranks that did not arrive and the call; ranks that disagree (one
// broadcasts while another reduces, different lengths or roots, all_to_all_v counts that do
// not pair up) throw naming both; a rank whose own arguments are inconsistent (a root
// outside the group, a receive buffer of the wrong length, counts that do not sum to their
// buffer) throws naming itself. Either way the group is broken from then on: the ranks
// waiting are woken and throw the same message, and every later call throws it, so that no
// thread is left waiting.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/noncopyable.h"
#include "dist/communicator.h"

namespace moba::dist {

class FakeGroup : NonCopyable {  // the communicators point back to the group
 public:
  // size >= 1 ranks; timeout > 0: how long a rank waits at a collective for the others.
  explicit FakeGroup(int size,
                     std::chrono::milliseconds timeout = std::chrono::milliseconds(10000));
  ~FakeGroup();

  int size() const { return size_; }
  // The communicator of rank r (owned by the group); each rank's calls from its own thread.
  Communicator& comm(int rank);

  // Runs fn(comm(r)) on one new thread per rank and joins them all. A rank whose fn
  // throws breaks the group (the others fail at their next collective instead of timing
  // out); then run() rethrows one failure: the lowest rank's that is not only the
  // consequence of another rank's ("rank 1 failed: ..."), as moba::Error.
  void run(const std::function<void(Communicator&)>& fn);

  // Marks the group broken with `why` and wakes the waiting ranks (they throw it).
  void abort(const std::string& why);

 private:
  class Rank;
  enum class Op { all_reduce, broadcast, barrier, all_gather, all_to_all_v };
  enum class Type { none, f32, f64, i32 };
  struct Arrival {  // what one rank brought to the current collective
    bool here = false;
    Op op = Op::barrier;
    Type type = Type::none;
    void* data = nullptr;  // in place, or what a gather or exchange receives into
    size_t count = 0;      // elements of data; all_gather, all_to_all_v: of send
    int root = 0;
    const void* send = nullptr;               // all_gather, all_to_all_v
    const size_t* send_counts = nullptr;      // all_to_all_v
    const size_t* recv_counts = nullptr;
    size_t send_counts_len = 0, recv_counts_len = 0;  // entries; size each when correct
    size_t recv_count = 0;  // all_gather, all_to_all_v: elements of data
  };
  static size_t element_bytes(Type type);

  void collective(int rank, const Arrival& arrival);
  // Breaks the group with `why` (waking the ranks waiting) and throws it; under the lock.
  [[noreturn]] void fail(const std::string& why);
  std::string check_arguments(int rank, const Arrival& a) const;  // "" when consistent
  std::string check_agreement(int64_t call) const;  // "" when all ranks called alike
  void complete();  // the last arrival's work: reduce or copy, under the lock
  template <typename Real>
  void reduce_in_rank_order();
  std::string describe(const Arrival& a) const;

  int size_;
  std::chrono::milliseconds timeout_;
  std::vector<std::unique_ptr<Rank>> ranks_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Arrival> arrivals_;  // (size), the current collective
  int arrived_ = 0;
  int64_t generation_ = 0;  // collectives completed
  std::string broken_;      // why the group failed; empty while healthy
};

}  // namespace moba::dist
