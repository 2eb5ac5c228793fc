// Launcher of the sm_90a warpgroup MoBA backward (bwd_moba_wgmma.cuh). moba_backward
// takes it by default where it runs and the block size is >= 128 (MOBA_MOBA_BWD=mma
// selects the mma.sync kernel; docs/kernel_notes.md, "v11"); the preparation kernel, the tensor maps and the dq conversion
// are those of the dense wgmma backward (attention_bwd_wgmma.cu).
#include <cuda.h>


#include "attention/cuda/attention_cuda.h"
#include "attention/cuda/bwd_moba_wgmma.cuh"
#include "attention/cuda/internal.h"
#include "core/cuda_check.cuh"
#include "core/error.h"

namespace moba::attn::cuda {
namespace {

template <int D>
void launch_moba(const Plan& plan, const AttnParams& p, const WgBwdPrep& r, cudaStream_t stream) {
  using T = WgMobaBwdTraits<D>;
  const WgBwdMaps m = wgbwd_maps(plan, p, r, T::kBr, T::kBc, T::kRowBox);
  constexpr auto kernel = attn_bwd_moba_wgmma_kernel<D>;
  wg_configure_once<kernel>(T::kThreads, T::kRegPoolNeeded, T::kSmemBytes, "MOBA_MOBA_BWD=wgmma");
  kernel<<<wgbwd_grid(plan, p, T::kBc), T::kThreads, T::kSmemBytes, stream>>>(
      m.q, m.k, m.v, m.dout, m.lse, m.delta, m.dq, p, r.lse_t, r.delta_t,
      static_cast<int>(r.n_pad));
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void moba_backward_wgmma(Plan& plan, AttnParams p, cudaStream_t stream) {
  wg_require_sm90("MOBA_MOBA_BWD=wgmma");
  const Layout& l = plan.layout();
  const int64_t D = l.head_dim, S = plan.config().block_size;
  if (D != 64 && D != 128)
    ::moba::detail::fail(__FILE__, __LINE__, "MOBA_MOBA_BWD=wgmma: head dim ", D, " (64 or 128)");
  if (S < WgBwdTraits<64>::kBc || S % WgBwdTraits<64>::kBc != 0)
    ::moba::detail::fail(__FILE__, __LINE__, "MOBA_MOBA_BWD=wgmma: block size ", S,
                         " (a multiple of 128; moba_backward keeps S = 64 on the mma.sync kernel)");
  const int64_t rows = l.tokens() * l.num_q_heads;
  const WgBwdPrep r = wgbwd_prepare(plan, p, stream);

  if (D == 64) launch_moba<64>(plan, p, r, stream);
  else launch_moba<128>(plan, p, r, stream);
  mark_phase("bwd_moba_wgmma", stream);

  dq_convert(p, rows, D, stream);
  mark_phase("bwd_dq_convert", stream);
}

}  // namespace moba::attn::cuda
