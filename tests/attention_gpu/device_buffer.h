// A device array for the GPU tests (attention_gpu_test, attention_long_gpu_test,
// decode_gpu_test, and the model's through model_gpu/gpu_compare.h): owns cudaMalloc'd
// memory, uploads and downloads whole or in part, and poisons itself so that anything a
// kernel fails to write fails the comparison. Beside it the suites' device checks.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <vector>

#include "core/cuda_check.cuh"

namespace moba::test {

// Whether a CUDA device is present (the GPU tests skip, with a message, when not); clears
// the error a failed query leaves.
inline bool have_device() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    cudaGetLastError();
    return false;
  }
  return true;
}

// Free device memory, bytes (tests that need tens of GiB skip, naming it, when short).
inline size_t free_device_bytes() {
  size_t free_b = 0, total_b = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  return free_b;
}

template <typename T>
struct DeviceBuffer {
  T* ptr = nullptr;
  size_t n = 0;
  explicit DeviceBuffer(size_t count) : n(count) {
    CUDA_CHECK(cudaMalloc(&ptr, sizeof(T) * std::max<size_t>(1, n)));
  }
  explicit DeviceBuffer(const std::vector<T>& h) : DeviceBuffer(h.size()) { upload(h); }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void upload(const std::vector<T>& h) {
    CUDA_CHECK(cudaMemcpy(ptr, h.data(), sizeof(T) * n, cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    CUDA_CHECK(cudaDeviceSynchronize());  // surfaces a kernel's fault here, not later
    std::vector<T> h(n);
    CUDA_CHECK(cudaMemcpy(h.data(), ptr, sizeof(T) * n, cudaMemcpyDeviceToHost));
    return h;
  }
  // Elements [first, first + count) to the host, as H of T's size (bf16 as its bits).
  template <typename H>
  std::vector<H> download(size_t first, size_t count) const {
    static_assert(sizeof(H) == sizeof(T), "host element of the device element's size");
    std::vector<H> h(count);
    CUDA_CHECK(cudaMemcpy(h.data(), ptr + first, sizeof(T) * count, cudaMemcpyDeviceToHost));
    return h;
  }
  // All bits set: NaN in bf16 and fp32, -1 in int32.
  void poison() { CUDA_CHECK(cudaMemset(ptr, 0xff, sizeof(T) * std::max<size_t>(1, n))); }
};

}  // namespace moba::test
