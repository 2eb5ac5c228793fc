// Allocations freed with their owner (the GPU model's and decoder's buffers): device memory
// (DevBuf) and pinned host memory (HostBuf: page-locked, for asynchronous copies).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "core/cuda_check.cuh"

namespace moba::model::cuda {

// resize() reallocates without keeping contents, reserve() likewise but only to grow;
// allocation failures are moba::Error (CUDA_CHECK), naming the call.
template <bool Pinned>
struct CudaBuf {
  void* p = nullptr;
  size_t bytes = 0;
  CudaBuf() = default;
  CudaBuf(const CudaBuf&) = delete;
  CudaBuf& operator=(const CudaBuf&) = delete;
  CudaBuf(CudaBuf&& o) noexcept : p(o.p), bytes(o.bytes) { o.p = nullptr, o.bytes = 0; }
  ~CudaBuf() { release(); }
  void release() {
    if (p) {
      if constexpr (Pinned)
        cudaFreeHost(p);
      else
        cudaFree(p);
    }
    p = nullptr;
    bytes = 0;
  }
  void resize(size_t b) {  // contents are not kept
    if (b == bytes) return;
    release();
    if (b) {
      if constexpr (Pinned)
        CUDA_CHECK(cudaMallocHost(&p, b));
      else
        CUDA_CHECK(cudaMalloc(&p, b));
    }
    bytes = b;
  }
  void reserve(size_t b) {  // contents are not kept when it grows
    if (b > bytes) resize(b);
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(p);
  }
};

using DevBuf = CudaBuf<false>;
using HostBuf = CudaBuf<true>;

}  // namespace moba::model::cuda
