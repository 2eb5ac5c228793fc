// Launcher of the sm_90a warpgroup MoBA backward (bwd_moba_wgmma.cuh). moba_backward
// takes it by default where it runs and the block size is >= 128 (MOBA_MOBA_BWD=mma
// selects the mma.sync kernel; docs/kernel_notes.md, "v11"); the preparation kernel, the tensor maps and the dq conversion
// are those of the dense wgmma backward (attention_bwd_wgmma.cu).
#include <cuda.h>


#include "attention/cuda/attention_cuda.h"
#include "attention/cuda/bwd_moba_wgmma.cuh"
#include "attention/cuda/internal.h"
#include "core/cuda_check.cuh"
#include "core/env_choice.h"
#include "core/error.h"

namespace moba::attn::cuda {
namespace {

constexpr const char* kWhat = "MOBA_MOBA_BWD=wgmma";

// MOBA_MOBA_BWD_DQ, read on every call: unset, empty or `red` = the gathered tiles' dQ rows
// added from registers with red.global.add.v2.f32 (the default); `bulk` = staged in shared
// memory and added by rows with the bulk reduce (v23, docs/kernel_notes.md: tested, and
// measured 10-15% slower, results/attention/v23); anything else is an error naming the value.
bool bulk_dq() { return env_choice("MOBA_MOBA_BWD_DQ", {"red", "bulk"}) == 1; }

template <int D>
void launch_moba(const Plan& plan, const AttnParams& p, const WgBwdPrep& r, cudaStream_t stream) {
  if (bulk_dq())
    wgbwd_launch<WgMobaBwdTraits<D>, attn_bwd_moba_wgmma_kernel<D, true>>(
        plan, p, r, "MOBA_MOBA_BWD=wgmma, MOBA_MOBA_BWD_DQ=bulk", stream, r.lse_t, r.delta_t,
        static_cast<int>(r.n_pad));
  else
    wgbwd_launch<WgMobaBwdTraits<D>, attn_bwd_moba_wgmma_kernel<D, false>>(
        plan, p, r, kWhat, stream, r.lse_t, r.delta_t, static_cast<int>(r.n_pad));
}

}  // namespace

void moba_backward_wgmma(Plan& plan, AttnParams p, cudaStream_t stream) {
  const int64_t S = plan.config().block_size;
  if (S < WgBwdTraits<64>::kBc || S % WgBwdTraits<64>::kBc != 0)
    ::moba::detail::fail(__FILE__, __LINE__, kWhat, ": block size ", S,
                         " (a multiple of 128; moba_backward keeps S = 64 on the mma.sync kernel)");
  (void)bulk_dq();  // a bad MOBA_MOBA_BWD_DQ is an error before any launch
  wgbwd_run(plan, p, kWhat, "bwd_moba_wgmma", launch_moba<64>, launch_moba<128>, stream);
}

}  // namespace moba::attn::cuda
