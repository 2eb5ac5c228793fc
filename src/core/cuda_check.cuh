// Every CUDA runtime call and kernel launch is checked; a failure throws moba::Error with
// the call, the file and the line, so that errors surface where they happen.
#pragma once

#include <cuda_runtime.h>

#include "core/error.h"

#define CUDA_CHECK(call)                                                                  \
  do {                                                                                    \
    cudaError_t moba_err_ = (call);                                                       \
    if (moba_err_ != cudaSuccess)                                                         \
      ::moba::detail::fail(__FILE__, __LINE__, "CUDA error ", cudaGetErrorName(moba_err_), \
                           " (", cudaGetErrorString(moba_err_), ") in ", #call, " at ",   \
                           __FILE__, ":", __LINE__);                                      \
  } while (0)

// After a <<<...>>> launch: catches bad launch configurations at once.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())
