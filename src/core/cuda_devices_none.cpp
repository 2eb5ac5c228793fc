// CPU-only build: no CUDA runtime is linked.
#include "core/build_info.h"

namespace moba {

bool built_with_cuda() { return false; }

std::vector<CudaDevice> cuda_devices(std::string* why) {
  if (why) *why = "built without CUDA (configure with nvcc on PATH or -DMOBA_CUDA=ON)";
  return {};
}

bool cuda_memory_info(size_t*, size_t*) { return false; }

}  // namespace moba
