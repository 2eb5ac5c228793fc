// Launcher of the sm_90a warpgroup MoBA backward (bwd_moba_wgmma.cuh). moba_backward
// takes it when MOBA_MOBA_BWD=wgmma and the block size is >= 128 (docs/kernel_notes.md,
// "wgmma MoBA backward"); the preparation kernel, the tensor maps and the dq conversion
// are those of the dense wgmma backward (attention_bwd_wgmma.cu).
#include <cuda.h>

#include <cstdlib>
#include <cstring>

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
  const Layout& l = plan.layout();
  const int64_t N = l.tokens();
  const CUtensorMap tq = wgbwd_map_bf16(p.q, N, p.Hq, D, T::kBr, "q");
  const CUtensorMap tk = wgbwd_map_bf16(p.k, N, p.Hkv, D, T::kBc, "k");
  const CUtensorMap tv = wgbwd_map_bf16(p.v, N, p.Hkv, D, T::kBc, "v");
  const CUtensorMap tdo = wgbwd_map_bf16(p.dout, N, p.Hq, D, T::kBr, "dout");
  const CUtensorMap tlse = wgbwd_map_rows(r.lse_t, N, p.Hq, r.n_pad, T::kRowBox, "lse");
  const CUtensorMap tdl = wgbwd_map_rows(r.delta_t, N, p.Hq, r.n_pad, T::kRowBox, "delta");
  const CUtensorMap tdq = wgbwd_map_dq(p.dq_acc, N, p.Hq, D);
  auto kernel = attn_bwd_moba_wgmma_kernel<D>;
  static bool configured = false;
  if (!configured) {
    // setmaxnreg.inc blocks until the CTA's register pool (numRegs x kThreads, fixed at
    // launch) can supply the consumers: refuse a kernel compiled with fewer registers (or
    // a build without sm_90a, where the kernel is a trap) instead of hanging.
    cudaFuncAttributes fa{};
    CUDA_CHECK(cudaFuncGetAttributes(&fa, kernel));
    if (fa.numRegs * T::kThreads < T::kRegPoolNeeded)
      ::moba::detail::fail(__FILE__, __LINE__, "MOBA_MOBA_BWD=wgmma: kernel compiled with ",
                           fa.numRegs, " registers per thread (needs ",
                           (T::kRegPoolNeeded + T::kThreads - 1) / T::kThreads,
                           " for setmaxnreg; is MOBA_CUDA_GENCODE sm_90a?)");
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    T::kSmemBytes));
    configured = true;
  }
  const unsigned tiles = static_cast<unsigned>((plan.max_seq_len() + T::kBc - 1) / T::kBc);
  const dim3 grid = p.heads_fastest ? dim3(p.Hkv, tiles, static_cast<unsigned>(l.batch()))
                                    : dim3(tiles, p.Hkv, static_cast<unsigned>(l.batch()));
  kernel<<<grid, T::kThreads, T::kSmemBytes, stream>>>(tq, tk, tv, tdo, tlse, tdl, tdq, p,
                                                        r.lse_t, r.delta_t,
                                                        static_cast<int>(r.n_pad));
  CUDA_CHECK_LAUNCH();
}

}  // namespace

bool moba_bwd_use_wgmma() {
  const char* e = std::getenv("MOBA_MOBA_BWD");
  if (e == nullptr || *e == '\0' || std::strcmp(e, "mma") == 0) return false;
  if (std::strcmp(e, "wgmma") == 0) return true;  // moba_backward_wgmma errors if it cannot run
  ::moba::detail::fail(__FILE__, __LINE__, "MOBA_MOBA_BWD=", e, ": expected mma or wgmma");
  return false;
}

void moba_backward_wgmma(Plan& plan, AttnParams p, cudaStream_t stream) {
  wgbwd_require_sm90("MOBA_MOBA_BWD=wgmma");
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
