// Launcher of the sm_90a warpgroup forward (fwd_wgmma.cuh): tensor maps for q, k, v and
// the same grid as the mma.sync dense forward. dense_forward takes it by default on an
// sm_90 device when the kernel was built for sm_90a; MOBA_DENSE_FWD=mma selects the
// mma.sync kernel, MOBA_DENSE_FWD=wgmma insists on this one (docs/kernel_notes.md,
// "wgmma forward").
#include <cuda.h>

#include <cstdlib>
#include <cstring>

#include "attention/cuda/attention_cuda.h"
#include "attention/cuda/fwd_wgmma.cuh"
#include "attention/cuda/internal.h"
#include "core/cuda_check.cuh"
#include "core/error.h"

namespace moba::attn::cuda {
namespace {

// cuTensorMapEncodeTiled is a driver API function: fetched through the runtime so that
// nothing links libcuda (CPU-only machines still load the binaries).
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

// A (N, H, D) bf16 tensor seen as 3-d, innermost first: (D columns, H heads, N tokens).
// Box: 64 columns (128 bytes, the 128B-swizzle span) x 1 head x `rows` tokens; in shared
// memory a box is `rows` rows of 128 bytes, swizzled (see wgmma.cuh). Tokens past N read
// as zeros (OOB fill NONE = zeros).
CUtensorMap make_map(const bf16* base, int64_t n_tok, int64_t heads, int64_t D, int rows) {
  CUtensorMap map;
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(D), static_cast<cuuint64_t>(heads),
                              static_cast<cuuint64_t>(n_tok)};
  // Byte strides of dims 1 and 2 (dim 0 is contiguous); multiples of 16 as required.
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

template <int D>
void launch(const Plan& plan, const AttnParams& p, cudaStream_t stream) {
  using T = WgFwdTraits<D>;
  const Layout& l = plan.layout();
  const int64_t N = l.tokens();
  const CUtensorMap tq = make_map(p.q, N, p.Hq, D, T::kBr);
  const CUtensorMap tk = make_map(p.k, N, p.Hkv, D, T::kBc);
  const CUtensorMap tv = make_map(p.v, N, p.Hkv, D, T::kBc);
  auto kernel = attn_fwd_wgmma_kernel<D>;
  static bool configured = false;
  if (!configured) {
    // setmaxnreg.inc (PTX ISA "setmaxnreg") blocks until the CTA's register pool, fixed at
    // launch to numRegs x kThreads, can supply the consumers' registers: a kernel compiled
    // with fewer registers would hang instead of failing. A build without sm_90a (the
    // kernel is then a trap, numRegs of a few) is refused here too.
    cudaFuncAttributes fa{};
    CUDA_CHECK(cudaFuncGetAttributes(&fa, kernel));
    if (fa.numRegs * T::kThreads < T::kRegPoolNeeded)
      ::moba::detail::fail(__FILE__, __LINE__, "MOBA_DENSE_FWD=wgmma: kernel compiled with ",
                           fa.numRegs, " registers per thread (needs ",
                           (T::kRegPoolNeeded + T::kThreads - 1) / T::kThreads,
                           " for setmaxnreg; is MOBA_CUDA_GENCODE sm_90a?)");
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    T::kSmemBytes));
    configured = true;
  }
  const unsigned tiles = static_cast<unsigned>((plan.max_seq_len() + T::kBr - 1) / T::kBr);
  const dim3 grid = p.heads_fastest ? dim3(p.Hq, tiles, static_cast<unsigned>(l.batch()))
                                    : dim3(tiles, p.Hq, static_cast<unsigned>(l.batch()));
  kernel<<<grid, T::kThreads, T::kSmemBytes, stream>>>(tq, tk, tv, p);
  CUDA_CHECK_LAUNCH();
}

// Whether the wgmma kernel can run here: an sm_90 device (wgmma and setmaxnreg are
// sm_90a-only) and a kernel compiled for it (a build without sm_90a leaves a trap with a
// handful of registers; see launch). Cached per device.
bool wgmma_runs_here(int D) {
  static int cached[64][2] = {};  // 0 unknown, 1 yes, 2 no
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  int& c = cached[dev & 63][D == 64 ? 0 : 1];
  if (c == 0) {
    int major = 0, minor = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
    bool ok = major == 9 && minor == 0 && (D == 64 || D == 128);
    if (ok) {
      cudaFuncAttributes fa{};
      if (D == 64) {
        CUDA_CHECK(cudaFuncGetAttributes(&fa, attn_fwd_wgmma_kernel<64>));
        ok = fa.numRegs * WgFwdTraits<64>::kThreads >= WgFwdTraits<64>::kRegPoolNeeded;
      } else {
        CUDA_CHECK(cudaFuncGetAttributes(&fa, attn_fwd_wgmma_kernel<128>));
        ok = fa.numRegs * WgFwdTraits<128>::kThreads >= WgFwdTraits<128>::kRegPoolNeeded;
      }
    }
    c = ok ? 1 : 2;
  }
  return c == 1;
}

}  // namespace

bool wgmma_available(int64_t head_dim) {
  return (head_dim == 64 || head_dim == 128) && wgmma_runs_here(static_cast<int>(head_dim));
}

bool dense_fwd_use_wgmma(int64_t head_dim) {
  const char* e = std::getenv("MOBA_DENSE_FWD");
  if (e != nullptr && std::strcmp(e, "mma") == 0) return false;
  if (e != nullptr && std::strcmp(e, "wgmma") == 0) return true;  // errors if it cannot run
  if (e != nullptr && *e != '\0')
    ::moba::detail::fail(__FILE__, __LINE__, "MOBA_DENSE_FWD=", e, ": expected mma or wgmma");
  return (head_dim == 64 || head_dim == 128) && wgmma_runs_here(static_cast<int>(head_dim));
}

void dense_forward_wgmma(const Plan& plan, const AttnParams& p, cudaStream_t stream) {
  int dev = 0, major = 0, minor = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
  if (major != 9 || minor != 0)
    ::moba::detail::fail(__FILE__, __LINE__, "MOBA_DENSE_FWD=wgmma needs an sm_90 device (found sm_",
                 major, minor, ")");
  const int64_t D = plan.layout().head_dim;
  if (D == 64) launch<64>(plan, p, stream);
  else if (D == 128) launch<128>(plan, p, stream);
  else ::moba::detail::fail(__FILE__, __LINE__, "MOBA_DENSE_FWD=wgmma: head dim ", D, " (64 or 128)");
}

}  // namespace moba::attn::cuda
