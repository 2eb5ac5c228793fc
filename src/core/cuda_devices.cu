#include "core/build_info.h"

#include <cuda_runtime.h>

namespace moba {

bool built_with_cuda() { return true; }

std::vector<CudaDevice> cuda_devices(std::string* why) {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    if (why) *why = std::string("no usable CUDA device: ") + cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky error for later calls
    return {};
  }
  std::vector<CudaDevice> out;
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
    out.push_back({i, p.name, p.major, p.minor, p.multiProcessorCount, p.totalGlobalMem});
  }
  if (out.empty() && why) *why = "no CUDA device found";
  return out;
}

bool cuda_memory_info(size_t* free_bytes, size_t* total_bytes) {
  if (cudaMemGetInfo(free_bytes, total_bytes) == cudaSuccess) return true;
  cudaGetLastError();  // clear the error for later calls
  return false;
}

}  // namespace moba
