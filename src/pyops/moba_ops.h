// The C ABI of libmoba_ops.so, the library the Python package (python/moba) loads with
// ctypes. Plain C types only, so that the package does not link against libtorch and
// keeps working across torch versions and CUDA builds of torch.
//
// Conventions of every function:
// - Shapes as in attention/layout.h: q, out, dout, dq (N, Hq, D); k, v, dk, dv (N, Hkv, D);
//   lse (N, Hq); sel (N, Hq, K) int32 in gate.h's format. Tensors are contiguous.
// - cu_seqlens is a HOST array of B + 1 int64 offsets (0 = c[0] < ... < c[B] = N).
// - Returns MOBA_OPS_OK, or an error code with the message in moba_ops_last_error()
//   (thread-local; valid until the next call on the same thread). No C++ exception
//   crosses this boundary.
// - scale <= 0 selects 1/sqrt(D).
// - dtype (CPU functions): MOBA_OPS_F32 or MOBA_OPS_F64 for q, k, v, out, lse, dout and
//   the gradients. The CUDA functions take bf16 tensors and an fp32 lse.
#pragma once

#include <stdint.h>

#if defined(__GNUC__)
#define MOBA_OPS_API __attribute__((visibility("default")))
#else
#define MOBA_OPS_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

enum {
  MOBA_OPS_OK = 0,
  MOBA_OPS_INVALID = 1,  // bad argument (moba::Error from a check at the API edge)
  MOBA_OPS_RUNTIME = 2,  // CUDA error or another failure at run time
};
enum { MOBA_OPS_F32 = 0, MOBA_OPS_F64 = 1 };

MOBA_OPS_API const char* moba_ops_last_error(void);
// 1 when the library was built with the CUDA kernels.
MOBA_OPS_API int moba_ops_has_cuda(void);
// "0.1.0 cuda=ON ..." (build information, for diagnostics).
MOBA_OPS_API const char* moba_ops_build_info(void);

// ---- CPU reference (attention/attention_cpu.h), float or double ----
MOBA_OPS_API int moba_cpu_gate(int dtype, const int64_t* cu_seqlens, int64_t B, int64_t Hq, int64_t Hkv,
                  int64_t D, int64_t S, int64_t K, const void* q, const void* k, int32_t* sel);
MOBA_OPS_API int moba_cpu_moba_forward(int dtype, const int64_t* cu_seqlens, int64_t B, int64_t Hq,
                          int64_t Hkv, int64_t D, int64_t S, int64_t K, double scale,
                          const int32_t* sel, const void* q, const void* k, const void* v,
                          void* out, void* lse);
MOBA_OPS_API int moba_cpu_moba_backward(int dtype, const int64_t* cu_seqlens, int64_t B, int64_t Hq,
                           int64_t Hkv, int64_t D, int64_t S, int64_t K, double scale,
                           const int32_t* sel, const void* q, const void* k, const void* v,
                           const void* out, const void* lse, const void* dout, void* dq,
                           void* dk, void* dv);
MOBA_OPS_API int moba_cpu_dense_forward(int dtype, const int64_t* cu_seqlens, int64_t B, int64_t Hq,
                           int64_t Hkv, int64_t D, double scale, const void* q, const void* k,
                           const void* v, void* out, void* lse);
MOBA_OPS_API int moba_cpu_dense_backward(int dtype, const int64_t* cu_seqlens, int64_t B, int64_t Hq,
                            int64_t Hkv, int64_t D, double scale, const void* q, const void* k,
                            const void* v, const void* out, const void* lse, const void* dout,
                            void* dq, void* dk, void* dv);

// ---- CUDA (attention/cuda/attention_cuda.h), bf16, on `stream` (a cudaStream_t) ----
// Every pointer is device memory of the current device. Plans are cached per (device,
// stream, cu_seqlens, Hq, Hkv, D, S, K, scale).
MOBA_OPS_API int moba_cuda_gate(const int64_t* cu_seqlens, int64_t B, int64_t Hq, int64_t Hkv, int64_t D,
                   int64_t S, int64_t K, const void* q, const void* k, int32_t* sel,
                   void* stream);
// MoBA forward; with run_gate != 0 the gate fills `sel` first (else sel is an input).
// *generation receives this call's id, to be passed back to moba_cuda_moba_backward.
MOBA_OPS_API int moba_cuda_moba_forward(const int64_t* cu_seqlens, int64_t B, int64_t Hq, int64_t Hkv,
                           int64_t D, int64_t S, int64_t K, double scale, int run_gate,
                           int32_t* sel, const void* q, const void* k, const void* v, void* out,
                           float* lse, void* stream, int64_t* generation);
// generation: the id moba_cuda_moba_forward returned for this sel (or -1: unknown). The
// forward's gather lists are reused only when it still names the plan's latest forward.
MOBA_OPS_API int moba_cuda_moba_backward(const int64_t* cu_seqlens, int64_t B, int64_t Hq, int64_t Hkv,
                            int64_t D, int64_t S, int64_t K, double scale, const int32_t* sel,
                            int64_t generation, const void* q, const void* k, const void* v,
                            const void* out, const float* lse, const void* dout, void* dq,
                            void* dk, void* dv, void* stream);
MOBA_OPS_API int moba_cuda_dense_forward(const int64_t* cu_seqlens, int64_t B, int64_t Hq, int64_t Hkv,
                            int64_t D, double scale, const void* q, const void* k,
                            const void* v, void* out, float* lse, void* stream);
MOBA_OPS_API int moba_cuda_dense_backward(const int64_t* cu_seqlens, int64_t B, int64_t Hq, int64_t Hkv,
                             int64_t D, double scale, const void* q, const void* k,
                             const void* v, const void* out, const float* lse,
                             const void* dout, void* dq, void* dk, void* dv, void* stream);
// Whether the sm_90a (wgmma) kernels run on the current device for head dim D: an sm_90
// device and a loaded image built for sm_90a. 0 elsewhere (mma.sync kernels), or without CUDA.
MOBA_OPS_API int moba_cuda_wgmma_available(int64_t D);
// Routes the plans' device memory to the caller's allocator (attention/cuda's
// DeviceAllocator: the package passes torch's caching allocator through ctypes callbacks).
// alloc(bytes, ctx) returns a device pointer of the current device, usable on the current
// stream, or NULL; free(ptr, ctx) releases it. Call before any CUDA op.
typedef void* (*moba_ops_alloc_fn)(uint64_t bytes, void* ctx);
typedef void (*moba_ops_free_fn)(void* ptr, void* ctx);
MOBA_OPS_API int moba_cuda_set_allocator(moba_ops_alloc_fn alloc, moba_ops_free_fn free_fn,
                                         void* ctx);
// Drops every cached plan (and its device scratch). Returns the number dropped.
MOBA_OPS_API int moba_cuda_clear_plans(void);

#ifdef __cplusplus
}
#endif
