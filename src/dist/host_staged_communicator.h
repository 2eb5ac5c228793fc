// A communicator over device memory that stages every buffer through the host and hands it
// to another communicator that takes host memory (the fake group's ranks): so that code
// written for NCCL's device buffers (the context-parallel GPU path, context_parallel_cuda.h)
// runs, with several ranks, on one GPU, in one process, one thread per rank. For tests, and
// for a machine whose GPUs NCCL cannot join. Each call synchronizes the device (the buffers
// must be complete when it starts), copies the device spans to host vectors, calls the host
// communicator and copies the results back; the *_host calls pass straight through.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "dist/communicator.h"

namespace moba::dist {

class HostStagedCommunicator : public Communicator {
 public:
  // `host` (not owned) takes host memory: a FakeGroup rank's communicator.
  explicit HostStagedCommunicator(Communicator& host) : host_(host) {}

  int rank() const override { return host_.rank(); }
  int size() const override { return host_.size(); }

  void all_reduce_sum(std::span<float> data) override;
  void all_reduce_sum(std::span<double> data) override;
  void broadcast(std::span<float> data, int root) override;
  void broadcast(std::span<double> data, int root) override;
  void barrier() override { host_.barrier(); }
  void all_gather(std::span<const float> send, std::span<float> recv) override;
  void all_gather(std::span<const double> send, std::span<double> recv) override;
  void all_gather(std::span<const int32_t> send, std::span<int32_t> recv) override;
  void all_to_all_v(std::span<const float> send, std::span<const size_t> send_counts,
                    std::span<float> recv, std::span<const size_t> recv_counts) override;
  void all_to_all_v(std::span<const double> send, std::span<const size_t> send_counts,
                    std::span<double> recv, std::span<const size_t> recv_counts) override;
  void all_to_all_v(std::span<const int32_t> send, std::span<const size_t> send_counts,
                    std::span<int32_t> recv, std::span<const size_t> recv_counts) override;
  void all_reduce_sum_host(std::span<double> data) override { host_.all_reduce_sum_host(data); }
  void all_gather_host(std::span<const int32_t> send, std::span<int32_t> recv) override {
    host_.all_gather_host(send, recv);
  }

 private:
  Communicator& host_;
};

}  // namespace moba::dist
