// The Communicator of data-parallel training on GPUs: one NCCL communicator per rank (one
// process per GPU), the spans in device memory of that rank's GPU. Built only in CUDA builds
// where NCCL is found (target moba_dist_nccl, docs/distributed.md).
//
// Nothing here waits forever: the communicator is non-blocking, and every call (the
// creation included) polls NCCL's asynchronous error and its stream; an NCCL error, or a
// call that does not complete within the timeout (a rank that died or hangs: NCCL cannot
// say which), aborts the communicator and throws moba::Error naming the call and this rank
// (CollectiveTimeout, communicator.h, for the timeout).
// After that the communicator is unusable (every call throws). Each operation is enqueued
// on the communicator's own stream and waited for before returning: the caller's kernels
// that wrote the buffer must be complete (or synchronized with that stream) first.
#pragma once

#include <array>
#include <chrono>
#include <span>
#include <string>

#include "core/noncopyable.h"
#include "dist/communicator.h"

struct ncclComm;     // nccl.h's ncclComm_t is ncclComm*
struct CUstream_st;  // cudaStream_t
struct CUevent_st;   // cudaEvent_t

namespace moba::dist {

// NCCL's unique id (ncclUniqueId's 128 bytes): made once, by one process (rank 0), and
// handed to the others out of band (a file, a TCP store) before they create their
// communicators.
struct NcclId {
  std::array<char, 128> bytes{};
};
NcclId nccl_unique_id();

class NcclCommunicator final : public Communicator, NonCopyable {  // owns an NCCL communicator
 public:
  // Collective over the `size` processes: rank `rank` on CUDA device `device`. Throws
  // moba::Error when NCCL fails or the others do not join within `timeout`.
  NcclCommunicator(const NcclId& id, int rank, int size, int device,
                   std::chrono::milliseconds timeout = std::chrono::minutes(10));
  ~NcclCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void all_reduce_sum(std::span<float> data) override;
  void all_reduce_sum(std::span<double> data) override;
  void broadcast(std::span<float> data, int root) override;
  void broadcast(std::span<double> data, int root) override;
  void barrier() override;
  void all_gather(std::span<const float> send, std::span<float> recv) override;
  void all_gather(std::span<const double> send, std::span<double> recv) override;
  void all_gather(std::span<const int32_t> send, std::span<int32_t> recv) override;
  // ncclSend/ncclRecv pairs in one NCCL group, the run to itself included; pairs with
  // nothing to move post nothing.
  void all_to_all_v(std::span<const float> send, std::span<const size_t> send_counts,
                    std::span<float> recv, std::span<const size_t> recv_counts) override;
  void all_to_all_v(std::span<const double> send, std::span<const size_t> send_counts,
                    std::span<double> recv, std::span<const size_t> recv_counts) override;
  void all_to_all_v(std::span<const int32_t> send, std::span<const size_t> send_counts,
                    std::span<int32_t> recv, std::span<const size_t> recv_counts) override;
  // Host arrays, copied through a device buffer of the communicator's.
  void all_reduce_sum_host(std::span<double> data) override;
  void all_gather_host(std::span<const int32_t> send, std::span<int32_t> recv) override;

  // Overlap (the data-parallel trainer's gradient buckets): enqueues an in-place sum of
  // `data` (device memory) on the communicator's stream after `after` (a CUDA event
  // recorded on the stream that produces data; nullptr: no wait) and returns without
  // waiting for it. wait_pending() waits for everything enqueued so (with the timeout);
  // the caller must not touch the buffers before.
  void all_reduce_sum_async(std::span<float> data, CUevent_st* after);
  void wait_pending();

  CUstream_st* stream() const { return stream_; }  // where the operations run

 private:
  // One collective in place on the communicator's stream, waited for with the timeout:
  // a sum over every rank (root < 0) or a broadcast from root.
  void collective(void* data, size_t count, int type, int root, const char* what);
  void gather(const void* send, size_t count, void* recv, size_t recv_count, int type);
  void exchange(const void* send, size_t send_total, std::span<const size_t> send_counts,
                void* recv, size_t recv_total, std::span<const size_t> recv_counts, int type,
                size_t elem_bytes);
  int broadcast_root(int root) const;  // root, checked to be a rank of the group
  void check(int result, const char* call);  // throws on an NCCL error (aborting)
  void settle(const char* call);             // waits out ncclInProgress, with the timeout
  void wait(const char* call);               // waits for the stream, with the timeout
  // Aborts and throws: CollectiveTimeout when `timed_out`, else moba::Error.
  [[noreturn]] void fail(const std::string& why, bool timed_out = false);
  void* host_staging(size_t bytes);  // a device buffer of at least `bytes`, kept

  int rank_, size_, device_;
  std::chrono::milliseconds timeout_;
  ncclComm* comm_ = nullptr;
  CUstream_st* stream_ = nullptr;
  float* scratch_ = nullptr;  // one device float: the barrier's all-reduce
  void* staging_ = nullptr;   // the host calls' device copy
  size_t staging_bytes_ = 0;
  std::string broken_;        // why the communicator was aborted; empty while healthy
};

}  // namespace moba::dist
