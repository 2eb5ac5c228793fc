#include "dist/host_staged_communicator.h"

#include <cuda_runtime.h>

#include <vector>

#include "core/cuda_check.cuh"

namespace moba::dist {
namespace {

template <typename T>
std::vector<T> to_host(std::span<const T> d) {
  std::vector<T> h(d.size());
  if (!d.empty())
    CUDA_CHECK(cudaMemcpy(h.data(), d.data(), d.size_bytes(), cudaMemcpyDeviceToHost));
  return h;
}
template <typename T>
void to_device(const std::vector<T>& h, std::span<T> d) {
  if (!d.empty()) CUDA_CHECK(cudaMemcpy(d.data(), h.data(), d.size_bytes(), cudaMemcpyHostToDevice));
}

// In place: data -> host, op, host -> data.
template <typename T, typename Op>
void in_place(std::span<T> data, Op op) {
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<T> h = to_host(std::span<const T>(data));
  op(std::span<T>(h));
  to_device(h, data);
}

template <typename T>
void gather(Communicator& host, std::span<const T> send, std::span<T> recv) {
  CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<T> s = to_host(send);
  std::vector<T> r(recv.size());
  host.all_gather(std::span<const T>(s), std::span<T>(r));
  to_device(r, recv);
}

template <typename T>
void exchange(Communicator& host, std::span<const T> send, std::span<const size_t> send_counts,
              std::span<T> recv, std::span<const size_t> recv_counts) {
  CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<T> s = to_host(send);
  std::vector<T> r(recv.size());
  host.all_to_all_v(std::span<const T>(s), send_counts, std::span<T>(r), recv_counts);
  to_device(r, recv);
}

}  // namespace

void HostStagedCommunicator::all_reduce_sum(std::span<float> data) {
  in_place(data, [&](std::span<float> h) { host_.all_reduce_sum(h); });
}
void HostStagedCommunicator::all_reduce_sum(std::span<double> data) {
  in_place(data, [&](std::span<double> h) { host_.all_reduce_sum(h); });
}
void HostStagedCommunicator::broadcast(std::span<float> data, int root) {
  in_place(data, [&](std::span<float> h) { host_.broadcast(h, root); });
}
void HostStagedCommunicator::broadcast(std::span<double> data, int root) {
  in_place(data, [&](std::span<double> h) { host_.broadcast(h, root); });
}
void HostStagedCommunicator::all_gather(std::span<const float> send, std::span<float> recv) {
  gather(host_, send, recv);
}
void HostStagedCommunicator::all_gather(std::span<const double> send, std::span<double> recv) {
  gather(host_, send, recv);
}
void HostStagedCommunicator::all_gather(std::span<const int32_t> send, std::span<int32_t> recv) {
  gather(host_, send, recv);
}
void HostStagedCommunicator::all_to_all_v(std::span<const float> send,
                                          std::span<const size_t> send_counts,
                                          std::span<float> recv,
                                          std::span<const size_t> recv_counts) {
  exchange(host_, send, send_counts, recv, recv_counts);
}
void HostStagedCommunicator::all_to_all_v(std::span<const double> send,
                                          std::span<const size_t> send_counts,
                                          std::span<double> recv,
                                          std::span<const size_t> recv_counts) {
  exchange(host_, send, send_counts, recv, recv_counts);
}
void HostStagedCommunicator::all_to_all_v(std::span<const int32_t> send,
                                          std::span<const size_t> send_counts,
                                          std::span<int32_t> recv,
                                          std::span<const size_t> recv_counts) {
  exchange(host_, send, send_counts, recv, recv_counts);
}

}  // namespace moba::dist
