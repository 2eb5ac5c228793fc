// What this binary was built with, and what it can see at run time.
#pragma once

#include <string>
#include <vector>

namespace moba {

struct CudaDevice {
  int index = 0;
  std::string name;
  int compute_major = 0, compute_minor = 0;
  int multiprocessors = 0;
  size_t memory_bytes = 0;
};

std::string version();
std::string compiler();
bool built_with_cuda();
// Devices visible at run time; empty (with `why` set) when CUDA is not compiled in or
// no device is present. Never throws.
std::vector<CudaDevice> cuda_devices(std::string* why);
// Free and total memory of the current CUDA device (cudaMemGetInfo); false when CUDA is not
// compiled in or the call fails. Never throws.
bool cuda_memory_info(size_t* free_bytes, size_t* total_bytes);

}  // namespace moba
