// Kernel attributes set once per kernel instance and device, before the first launch there
// (function attributes such as the dynamic shared-memory limit are per device).
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "core/cuda_check.cuh"

namespace moba {

// Once per kernel instance and device (function attributes are per device), before its
// first launch there: `configure()`. A failed configure is tried again on the next call.
template <auto Kernel, typename F>
void once_per_device(F&& configure) {
  static std::atomic<uint64_t> done{0};  // bit d: device d (mod 64) is configured
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  const uint64_t bit = uint64_t{1} << (dev & 63);
  if (done.load(std::memory_order_acquire) & bit) return;
  configure();
  done.fetch_or(bit, std::memory_order_acq_rel);
}
// The dynamic shared-memory limit of Kernel raised to smem_bytes, once per device.
template <auto Kernel>
void set_smem_once(int smem_bytes) {
  once_per_device<Kernel>([&] {
    CUDA_CHECK(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes));
  });
}

}  // namespace moba
