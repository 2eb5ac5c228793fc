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

template <int D>
void launch(const Plan& plan, const AttnParams& p, cudaStream_t stream) {
  using T = WgFwdTraits<D>;
  const Layout& l = plan.layout();
  const int64_t N = l.tokens();
  const CUtensorMap tq = wg_map_bf16(p.q, N, p.Hq, D, T::kBr, "q");
  const CUtensorMap tk = wg_map_bf16(p.k, N, p.Hkv, D, T::kBc, "k");
  const CUtensorMap tv = wg_map_bf16(p.v, N, p.Hkv, D, T::kBc, "v");
  auto kernel = attn_fwd_wgmma_kernel<D>;
  static bool configured = false;
  if (!configured) {  // the register-pool check of setmaxnreg and the shared-memory limit
    wg_configure(reinterpret_cast<const void*>(kernel), T::kThreads, T::kRegPoolNeeded,
                 T::kSmemBytes, "MOBA_DENSE_FWD=wgmma");
    configured = true;
  }
  const unsigned tiles = static_cast<unsigned>((plan.max_seq_len() + T::kBr - 1) / T::kBr);
  const dim3 grid = p.heads_fastest ? dim3(p.Hq, tiles, static_cast<unsigned>(l.batch()))
                                    : dim3(tiles, p.Hq, static_cast<unsigned>(l.batch()));
  kernel<<<grid, T::kThreads, T::kSmemBytes, stream>>>(tq, tk, tv, p);
  CUDA_CHECK_LAUNCH();
}

// The current device's compute capability (major * 10 + minor), cached per device: the
// wgmma launchers ask on every call.
int device_sm() {
  static int cached[64] = {};  // 0 = not asked yet
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  int& c = cached[dev & 63];
  if (c == 0) {
    int major = 0, minor = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
    c = major * 10 + minor;
  }
  return c;
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
    bool ok = device_sm() == 90 && (D == 64 || D == 128);
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

bool wgmma_switch(const char* var, int64_t head_dim) {
  const char* e = std::getenv(var);
  if (e == nullptr || *e == '\0') return wgmma_available(head_dim);  // the default
  if (std::strcmp(e, "mma") == 0) return false;
  if (std::strcmp(e, "wgmma") == 0) return true;  // the launcher errors if it cannot run
  ::moba::detail::fail(__FILE__, __LINE__, var, "=", e, ": expected mma or wgmma");
  return false;
}

void wg_require_sm90(const char* what) {
  const int sm = device_sm();
  if (sm != 90)
    ::moba::detail::fail(__FILE__, __LINE__, what, " needs an sm_90 device (found sm_", sm, ")");
}

void dense_forward_wgmma(const Plan& plan, const AttnParams& p, cudaStream_t stream) {
  wg_require_sm90("MOBA_DENSE_FWD=wgmma");
  const int64_t D = plan.layout().head_dim;
  if (D == 64) launch<64>(plan, p, stream);
  else if (D == 128) launch<128>(plan, p, stream);
  else ::moba::detail::fail(__FILE__, __LINE__, "MOBA_DENSE_FWD=wgmma: head dim ", D, " (64 or 128)");
}

}  // namespace moba::attn::cuda
