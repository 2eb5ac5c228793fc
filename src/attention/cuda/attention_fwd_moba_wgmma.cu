// Launchers of the sm_90a MoBA forward kernels (fwd_moba_wgmma.cuh): the past blocks over
// the gather index's tiles, then the current block with the merge. moba_forward
// (attention_fwd.cu) takes them by default where they run (sm_90a, S a multiple of 128);
// MOBA_MOBA_FWD=mma selects the mma.sync kernels of fwd_kernel.cuh. Tested on the H100
// (docs/kernel_notes.md, "v11").
#include <cuda.h>


#include "attention/cuda/attention_cuda.h"
#include "attention/cuda/fwd_moba_wgmma.cuh"
#include "attention/cuda/internal.h"
#include "core/cuda_check.cuh"
#include "core/error.h"

namespace moba::attn::cuda {
namespace {

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
  wg_configure(reinterpret_cast<const void*>(kernel), T::kThreads, T::kRegPoolNeeded,
               T::kSmemBytes, PAST ? "MOBA_MOBA_FWD=wgmma (past-block kernel)"
                                   : "MOBA_MOBA_FWD=wgmma (current-block kernel)");
  configured = true;
}

template <int D>
void launch_past(const Plan& plan, const AttnParams& p, int64_t max_tiles, cudaStream_t stream) {
  using T = WgMobaFwdTraits<D, true>;
  configure_once<D, true>();
  const int64_t N = plan.layout().tokens();
  const CUtensorMap tk = wg_map_bf16(p.k, N, p.Hkv, D, T::kBc, "k");
  const CUtensorMap tv = wg_map_bf16(p.v, N, p.Hkv, D, T::kBc, "v");
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
  const CUtensorMap tq = wg_map_bf16(p.q, N, p.Hq, D, T::kBr, "q");
  const CUtensorMap tk = wg_map_bf16(p.k, N, p.Hkv, D, T::kBc, "k");
  const CUtensorMap tv = wg_map_bf16(p.v, N, p.Hkv, D, T::kBc, "v");
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

void moba_forward_past_wgmma(const Plan& plan, const AttnParams& p, int64_t max_tiles,
                             cudaStream_t stream) {
  wg_require_sm90("MOBA_MOBA_FWD=wgmma");
  check_shape(plan);
  if (max_tiles <= 0) return;
  if (plan.layout().head_dim == 64) launch_past<64>(plan, p, max_tiles, stream);
  else launch_past<128>(plan, p, max_tiles, stream);
}

void moba_forward_current_wgmma(const Plan& plan, const AttnParams& p, cudaStream_t stream) {
  wg_require_sm90("MOBA_MOBA_FWD=wgmma");
  check_shape(plan);
  if (plan.layout().head_dim == 64) launch_current<64>(plan, p, stream);
  else launch_current<128>(plan, p, stream);
}

}  // namespace moba::attn::cuda
