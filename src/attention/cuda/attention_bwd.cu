// Backward launchers: delta = rowsum(dO o O), zeroed dQ accumulator, attn_bwd_kernel, and
// the conversion of dQ to bf16.
#include <algorithm>

#include "attention/cuda/attention_cuda.h"
#include "attention/cuda/bwd_kernel.cuh"
#include "attention/cuda/internal.h"
#include "core/cuda_check.cuh"

namespace moba::attn::cuda {
namespace {

// One warp per (token, query head) row: delta = rowsum(dO o O), and the row of the fp32
// dQ accumulator zeroed (instead of a separate memset pass).
template <int D>
__global__ void delta_kernel(const __nv_bfloat16* __restrict__ o,
                             const __nv_bfloat16* __restrict__ dout, int rows,
                             float* __restrict__ delta, float* __restrict__ dq_acc) {
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= rows) return;
  const float acc = detail::warp_row_delta_zero_dq<D>(o, dout, dq_acc, row, lane);
  if (lane == 0) delta[row] = acc;
}

__global__ void dq_convert_kernel(const float2* __restrict__ acc, int64_t n2, float scale,
                                  __nv_bfloat162* __restrict__ dq) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n2;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float2 x = acc[i];
    dq[i] = __floats2bfloat162_rn(x.x * scale, x.y * scale);
  }
}

template <int D, int NW, bool MOBA>
void launch_bwd(const AttnParams& p, dim3 grid, cudaStream_t stream) {
  constexpr int BR = 64;
  using T = BwdTraits<D, NW, BR>;
  constexpr auto kernel = attn_bwd_kernel<D, NW, BR, MOBA>;
  set_smem_once<kernel>(T::kSmemBytes);
  kernel<<<grid, T::kThreads, T::kSmemBytes, stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

template <bool MOBA>
void backward(Plan& plan, AttnParams p, int nw, cudaStream_t stream) {
  const Layout& l = plan.layout();
  const int64_t D = l.head_dim;
  const int64_t rows = l.tokens() * l.num_q_heads;
  p.delta = static_cast<float*>(plan.scratch(kSlotDelta, sizeof(float) * rows));
  p.dq_acc = static_cast<float*>(plan.scratch(kSlotDqAcc, sizeof(float) * rows * D));
  const int warps = 8;
  const unsigned dblocks = static_cast<unsigned>((rows + warps - 1) / warps);
  if (D == 64) delta_kernel<64><<<dblocks, warps * 32, 0, stream>>>(p.o, p.dout, static_cast<int>(rows), p.delta, p.dq_acc);
  else delta_kernel<128><<<dblocks, warps * 32, 0, stream>>>(p.o, p.dout, static_cast<int>(rows), p.delta, p.dq_acc);
  CUDA_CHECK_LAUNCH();
  mark_phase("bwd_delta_zero_dq", stream);

  const int bc = 16 * nw;
  const dim3 grid = tile_grid(plan, p, p.Hkv, bc);
  if (D == 64 && nw == 4) launch_bwd<64, 4, MOBA>(p, grid, stream);
  else if (D == 64) launch_bwd<64, 8, MOBA>(p, grid, stream);
  else if (nw == 4) launch_bwd<128, 4, MOBA>(p, grid, stream);
  else launch_bwd<128, 8, MOBA>(p, grid, stream);
  mark_phase(MOBA ? "bwd_moba_kernel" : "bwd_dense_kernel", stream);

  dq_convert(p, rows, D, stream);
  mark_phase("bwd_dq_convert", stream);
}

AttnParams bwd_params(const Plan& plan, const bf16* q, const bf16* k, const bf16* v,
                      const bf16* out, const float* lse, const bf16* dout, bf16* dq, bf16* dk,
                      bf16* dv) {
  AttnParams p = plan_params(plan, q, k, v);
  p.o = const_cast<bf16*>(out);
  p.lse = const_cast<float*>(lse);
  p.dout = dout;
  p.dq = dq;
  p.dk = dk;
  p.dv = dv;
  return p;
}

}  // namespace

void dq_convert(const AttnParams& p, int64_t rows, int64_t D, cudaStream_t stream) {
  const int64_t n2 = rows * D / 2;
  const unsigned cblocks = static_cast<unsigned>(std::min<int64_t>((n2 + 255) / 256, 65535));
  dq_convert_kernel<<<cblocks, 256, 0, stream>>>(reinterpret_cast<const float2*>(p.dq_acc), n2,
                                                 p.scale, reinterpret_cast<__nv_bfloat162*>(p.dq));
  CUDA_CHECK_LAUNCH();
}

void dense_backward(Plan& plan, const bf16* q, const bf16* k, const bf16* v, const bf16* out,
                    const float* lse, const bf16* dout, bf16* dq, bf16* dk, bf16* dv,
                    cudaStream_t stream) {
  AttnParams p = bwd_params(plan, q, k, v, out, lse, dout, dq, dk, dv);
  if (wgmma_switch("MOBA_DENSE_BWD", plan.layout().head_dim)) {  // sm_90a (bwd_wgmma.cuh)
    dense_backward_wgmma(plan, p, stream);
    return;
  }
  // 128 keys per CTA (8 warps): 64 keys with two CTAs per SM measured slower (v4 notes,
  // results/attention/v4/bwd4.md).
  backward<false>(plan, p, 8, stream);
}

void moba_backward(Plan& plan, const int32_t* sel, const bf16* q, const bf16* k,
                   const bf16* v, const bf16* out, const float* lse, const bf16* dout,
                   bf16* dq, bf16* dk, bf16* dv, cudaStream_t stream) {
  AttnParams p = bwd_params(plan, q, k, v, out, lse, dout, dq, dk, dv);
  p.sel = sel;
  // Keys per CTA (16 * warps) must not straddle a block: 128 unless S = 64.
  const int nw = plan.config().block_size >= 128 ? 8 : 4;
  if (p.kp > 0 && plan.full_blocks() > 0) {
    if (plan.indexed_selection() == sel) {  // built by moba_forward for this selection
      const size_t buckets = static_cast<size_t>(plan.full_blocks()) * p.Hkv;
      p.bucket_offset = static_cast<int32_t*>(plan.scratch(kSlotOffsets, sizeof(int32_t) * (buckets + 1)));
      p.entries = static_cast<int32_t*>(plan.scratch(
          kSlotEntries, sizeof(int32_t) * std::max<size_t>(1, static_cast<size_t>(p.N) * p.Hq * p.kp)));
    } else {
      const GatherIndex ix = build_gather_index(plan, sel, 128, stream);
      plan.set_indexed_selection(sel);
      p.entries = ix.entries;
      p.bucket_offset = ix.offsets;
    }
  }
  // The sm_90a kernel (bwd_moba_wgmma.cuh) by default where it runs, for S >= 128 only (its
  // CTA's 128 keys must lie in one block); S = 64 stays on the mma.sync kernel.
  // MOBA_MOBA_BWD=mma selects the mma.sync kernel, =wgmma insists.
  const bool wgmma = wgmma_switch("MOBA_MOBA_BWD", plan.layout().head_dim);  // validates it
  if (wgmma && plan.config().block_size >= 128) {
    moba_backward_wgmma(plan, p, stream);
    return;
  }
  backward<true>(plan, p, nw, stream);
}

}  // namespace moba::attn::cuda
