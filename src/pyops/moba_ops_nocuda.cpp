// libmoba_ops.so built without CUDA (MOBA_CUDA=OFF or no nvcc): the CUDA entry points of
// moba_ops.h exist and fail with a message saying so.
#include "pyops/guard.h"
#include "pyops/moba_ops.h"

namespace {
int no_cuda() {
  moba::pyops::set_error(
      "the moba package was built without CUDA (no nvcc at build time, or MOBA_CUDA=OFF): "
      "reinstall with nvcc on PATH for CUDA tensors");
  return MOBA_OPS_RUNTIME;
}
}  // namespace

extern "C" {
int moba_ops_has_cuda(void) { return 0; }
int moba_cuda_gate(const int64_t*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                   const void*, const void*, int32_t*, void*) { return no_cuda(); }
int moba_cuda_moba_forward(const int64_t*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                           double, int, int32_t*, const void*, const void*, const void*, void*,
                           float*, void*, int64_t*) { return no_cuda(); }
int moba_cuda_moba_backward(const int64_t*, int64_t, int64_t, int64_t, int64_t, int64_t,
                            int64_t, double, const int32_t*, int64_t, const void*, const void*,
                            const void*, const void*, const float*, const void*, void*, void*,
                            void*, void*) { return no_cuda(); }
int moba_cuda_dense_forward(const int64_t*, int64_t, int64_t, int64_t, int64_t, double,
                            const void*, const void*, const void*, void*, float*, void*) {
  return no_cuda();
}
int moba_cuda_dense_backward(const int64_t*, int64_t, int64_t, int64_t, int64_t, double,
                             const void*, const void*, const void*, const void*, const float*,
                             const void*, void*, void*, void*, void*) { return no_cuda(); }
int moba_cuda_wgmma_available(int64_t) { return 0; }
int moba_cuda_set_allocator(moba_ops_alloc_fn, moba_ops_free_fn, void*) { return 0; }
int moba_cuda_clear_plans(void) { return 0; }
}
