// A device allocation freed with its owner (the GPU model's and decoder's buffers).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "core/cuda_check.cuh"

namespace moba::model::cuda {

// resize() reallocates without keeping contents; cudaMalloc failures are moba::Error
// (CUDA_CHECK), naming the call.
struct DevBuf {
  void* p = nullptr;
  size_t bytes = 0;
  DevBuf() = default;
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  DevBuf(DevBuf&& o) noexcept : p(o.p), bytes(o.bytes) { o.p = nullptr, o.bytes = 0; }
  ~DevBuf() { release(); }
  void release() {
    if (p) cudaFree(p);
    p = nullptr;
    bytes = 0;
  }
  void resize(size_t b) {  // contents are not kept
    if (b == bytes) return;
    release();
    if (b) CUDA_CHECK(cudaMalloc(&p, b));
    bytes = b;
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(p);
  }
};

}  // namespace moba::model::cuda
