// Launchers of the sm_90a MoBA forward kernels (fwd_moba_wgmma.cuh): the past blocks over
// the gather index's tiles, then the current block with the merge. moba_forward
// (attention_fwd.cu) takes them when MOBA_MOBA_FWD=wgmma; the default stays the mma.sync
// kernels of fwd_kernel.cuh. WRITTEN COMPILE-ONLY (docs/kernel_notes.md, "wgmma MoBA
// forward (compile-only)").
#include <cuda.h>

#include <cstdlib>
#include <cstring>

#include "attention/cuda/attention_cuda.h"
#include "attention/cuda/fwd_moba_wgmma.cuh"
#include "attention/cuda/internal.h"
#include "core/cuda_check.cuh"
#include "core/error.h"

namespace moba::attn::cuda {
namespace {

// The same tensor maps as attention_fwd_wgmma.cu (its helpers are file-local there).
using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                   const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                   const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                   CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

EncodeTiledFn encode_fn() {
  static EncodeTiledFn fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000,
                                                cudaEnableDefault, &q));
    if (q != cudaDriverEntryPointSuccess || f == nullptr)
      ::moba::detail::fail(__FILE__, __LINE__, "cuTensorMapEncodeTiled not found in the driver");
    return reinterpret_cast<EncodeTiledFn>(f);
  }();
  return fn;
}

// A (N, H, D) bf16 tensor as 3-d (D columns, H heads, N tokens); box 64 columns (128 bytes,
// the 128B swizzle span) x 1 head x `rows` tokens; tokens past N read as zeros.
CUtensorMap make_map(const bf16* base, int64_t n_tok, int64_t heads, int64_t D, int rows) {
  CUtensorMap map;
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(D), static_cast<cuuint64_t>(heads),
                              static_cast<cuuint64_t>(n_tok)};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(D * 2),
                                 static_cast<cuuint64_t>(heads * D * 2)};
  const cuuint32_t box[3] = {64, 1, static_cast<cuuint32_t>(rows)};
  const cuuint32_t elem_strides[3] = {1, 1, 1};
  const CUresult r = encode_fn()(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3,
                                 const_cast<bf16*>(base), dims, strides, box, elem_strides,
                                 CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                 CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                 CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    ::moba::detail::fail(__FILE__, __LINE__, "cuTensorMapEncodeTiled failed with CUresult ",
                         static_cast<int>(r));
  return map;
}

// An sm_90 device, else a clear error (wgmma and setmaxnreg are sm_90a-only).
void require_sm90() {
  int dev = 0, major = 0, minor = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
  if (major != 9 || minor != 0)
    ::moba::detail::fail(__FILE__, __LINE__, "MOBA_MOBA_FWD=wgmma needs an sm_90 device (found sm_",
                         major, minor, ")");
}

// Once per kernel instance: the register pool check (setmaxnreg.inc blocks until the
// CTA's pool, numRegs x 384 fixed at launch, can supply the consumers' registers: a kernel
// compiled with fewer registers would hang; a build without sm_90a leaves a trap with a
// handful of registers) and the dynamic shared-memory limit.
template <int D, bool PAST>
void configure_once() {
  using T = WgMobaFwdTraits<D, PAST>;
  static bool configured = false;
  if (configured) return;
  auto kernel = moba_fwd_wgmma_kernel<D, PAST>;
  cudaFuncAttributes fa{};
  CUDA_CHECK(cudaFuncGetAttributes(&fa, kernel));
  if (fa.numRegs * T::kThreads < T::kRegPoolNeeded)
    ::moba::detail::fail(__FILE__, __LINE__, "MOBA_MOBA_FWD=wgmma: the ",
                         PAST ? "past-block" : "current-block", " kernel (D = ", D,
                         ") was compiled with ", fa.numRegs, " registers per thread (needs ",
                         (T::kRegPoolNeeded + T::kThreads - 1) / T::kThreads,
                         " for setmaxnreg; is MOBA_CUDA_GENCODE sm_90a?)");
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  T::kSmemBytes));
  configured = true;
}

template <int D>
void launch_past(const Plan& plan, const AttnParams& p, int64_t max_tiles, cudaStream_t stream) {
  using T = WgMobaFwdTraits<D, true>;
  configure_once<D, true>();
  const int64_t N = plan.layout().tokens();
  const CUtensorMap tk = make_map(p.k, N, p.Hkv, D, T::kBc);
  const CUtensorMap tv = make_map(p.v, N, p.Hkv, D, T::kBc);
  // Q is gathered with cp.async; the kernel's tm_q parameter is unused (tk in its place).
  moba_fwd_wgmma_kernel<D, true><<<static_cast<unsigned>(max_tiles), T::kThreads,
                                   T::kSmemBytes, stream>>>(tk, tk, tv, p);
  CUDA_CHECK_LAUNCH();
}

template <int D>
void launch_current(const Plan& plan, const AttnParams& p, cudaStream_t stream) {
  using T = WgMobaFwdTraits<D, false>;
  configure_once<D, false>();
  const Layout& l = plan.layout();
  const int64_t N = l.tokens();
  const CUtensorMap tq = make_map(p.q, N, p.Hq, D, T::kBr);
  const CUtensorMap tk = make_map(p.k, N, p.Hkv, D, T::kBc);
  const CUtensorMap tv = make_map(p.v, N, p.Hkv, D, T::kBc);
  const unsigned tiles = static_cast<unsigned>((plan.max_seq_len() + T::kBr - 1) / T::kBr);
  const dim3 grid = p.heads_fastest ? dim3(p.Hq, tiles, static_cast<unsigned>(l.batch()))
                                    : dim3(tiles, p.Hq, static_cast<unsigned>(l.batch()));
  moba_fwd_wgmma_kernel<D, false><<<grid, T::kThreads, T::kSmemBytes, stream>>>(tq, tk, tv, p);
  CUDA_CHECK_LAUNCH();
}

void check_shape(const Plan& plan) {
  const int64_t D = plan.layout().head_dim, S = plan.config().block_size;
  if (D != 64 && D != 128)
    ::moba::detail::fail(__FILE__, __LINE__, "MOBA_MOBA_FWD=wgmma: head dim ", D, " (64 or 128)");
  if (S % 128 != 0)
    ::moba::detail::fail(__FILE__, __LINE__, "MOBA_MOBA_FWD=wgmma: block size ", S,
                         " (a multiple of 128; moba_forward keeps mma.sync for smaller blocks)");
}

}  // namespace

bool moba_fwd_use_wgmma(const Plan& plan) {
  const char* e = std::getenv("MOBA_MOBA_FWD");
  if (e == nullptr || *e == '\0') {  // the default: where the sm_90a kernels run
    if (!wgmma_available(plan.layout().head_dim)) return false;
  } else if (std::strcmp(e, "mma") == 0) {
    return false;
  } else if (std::strcmp(e, "wgmma") != 0) {
    ::moba::detail::fail(__FILE__, __LINE__, "MOBA_MOBA_FWD=", e, ": expected mma or wgmma");
  }
  // Blocks of 64 keys: a 128-row query tile would straddle two blocks; the mma.sync
  // kernels (64-row tiles there) stay. Everything else is checked by the launchers.
  return plan.config().block_size % 128 == 0;
}

void moba_forward_past_wgmma(const Plan& plan, const AttnParams& p, int64_t max_tiles,
                             cudaStream_t stream) {
  require_sm90();
  check_shape(plan);
  if (max_tiles <= 0) return;
  if (plan.layout().head_dim == 64) launch_past<64>(plan, p, max_tiles, stream);
  else launch_past<128>(plan, p, max_tiles, stream);
}

void moba_forward_current_wgmma(const Plan& plan, const AttnParams& p, cudaStream_t stream) {
  require_sm90();
  check_shape(plan);
  if (plan.layout().head_dim == 64) launch_current<64>(plan, p, stream);
  else launch_current<128>(plan, p, stream);
}

}  // namespace moba::attn::cuda
