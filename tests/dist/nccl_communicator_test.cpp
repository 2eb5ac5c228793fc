// The NCCL communicator on a GPU (registered with -DMOBA_GPU_TESTS=ON, label gpu): one rank
// runs the real calls (all-reduce, broadcast, barrier, all-gather, all-to-all-v on device
// memory); a group of two
// whose second rank never joins is an error after the timeout, not a hang. Groups of
// several GPUs wait for a machine that has them.
#include "dist/nccl_communicator.h"

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

#include "core/cuda_check.cuh"
#include "core/error.h"
#include "attention_gpu/device_buffer.h"

namespace moba::dist {
namespace {

using namespace std::chrono_literals;

using test::have_device;  // attention_gpu/device_buffer.h

template <typename Real>
std::vector<Real> round_trip(NcclCommunicator& c, const std::vector<Real>& host, bool reduce) {
  Real* d = nullptr;
  CUDA_CHECK(cudaMalloc(&d, host.size() * sizeof(Real)));
  CUDA_CHECK(cudaMemcpy(d, host.data(), host.size() * sizeof(Real), cudaMemcpyHostToDevice));
  if (reduce) c.all_reduce_sum(std::span<Real>(d, host.size()));
  else c.broadcast(std::span<Real>(d, host.size()), 0);
  std::vector<Real> out(host.size());
  CUDA_CHECK(cudaMemcpy(out.data(), d, host.size() * sizeof(Real), cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaFree(d));
  return out;
}

TEST(NcclCommunicator, OneRankRunsEveryCall) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device: NCCL tests skipped";
  NcclCommunicator c(nccl_unique_id(), 0, 1, 0, 60000ms);
  EXPECT_EQ(c.rank(), 0);
  EXPECT_EQ(c.size(), 1);
  const std::vector<float> f{1.5f, -2.0f, 3.25f};
  const std::vector<double> d{1e-300, 2.0, -7.5, 0.1};
  EXPECT_EQ(round_trip(c, f, true), f);  // the sum over one rank
  EXPECT_EQ(round_trip(c, d, true), d);
  EXPECT_EQ(round_trip(c, f, false), f);
  EXPECT_EQ(round_trip(c, d, false), d);
  c.barrier();
  std::vector<double> one(1);
  EXPECT_THROW(c.broadcast(std::span<double>(one.data(), 0), 1), Error);  // root outside
}

// Device copies of host vectors, freed at scope exit.
template <typename T>
struct DeviceVec {
  T* p = nullptr;
  size_t n = 0;
  explicit DeviceVec(const std::vector<T>& host) : n(host.size()) {
    CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)));
    if (n) CUDA_CHECK(cudaMemcpy(p, host.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  }
  ~DeviceVec() { cudaFree(p); }
  std::vector<T> host() const {
    std::vector<T> h(n);
    if (n) CUDA_CHECK(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
};

TEST(NcclCommunicator, OneRankGathersAndExchanges) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device: NCCL tests skipped";
  NcclCommunicator c(nccl_unique_id(), 0, 1, 0, 60000ms);
  const std::vector<int32_t> ids{3, -1, 7};
  DeviceVec<int32_t> send(ids), recv(std::vector<int32_t>(3, 0));
  c.all_gather(std::span<const int32_t>(send.p, 3), std::span<int32_t>(recv.p, 3));
  EXPECT_EQ(recv.host(), ids);
  const std::vector<double> rows{1.5, -2.0, 1e-300, 4.0};
  DeviceVec<double> dsend(rows), drecv(std::vector<double>(4, 0.0));
  const std::vector<size_t> counts{4};
  c.all_to_all_v(std::span<const double>(dsend.p, 4), counts, std::span<double>(drecv.p, 4),
                 counts);
  EXPECT_EQ(drecv.host(), rows);
  // Nothing to move is a valid exchange; a receive buffer of the wrong size is not.
  const std::vector<size_t> none{0};
  c.all_to_all_v(std::span<const float>(), none, std::span<float>(), none);
  EXPECT_THROW(c.all_gather(std::span<const int32_t>(send.p, 3), std::span<int32_t>(recv.p, 2)),
               Error);
}

TEST(NcclCommunicator, MissingRankIsAnErrorNotAHang) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device: NCCL tests skipped";
  const auto t0 = std::chrono::steady_clock::now();
  try {
    NcclCommunicator c(nccl_unique_id(), 0, 2, 0, 3000ms);  // rank 1 never comes
    FAIL() << "expected moba::Error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("ncclCommInitRankConfig did not complete within 3000 ms on rank 0 of 2"),
              std::string::npos)
        << msg;
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 60s);
}

}  // namespace
}  // namespace moba::dist
