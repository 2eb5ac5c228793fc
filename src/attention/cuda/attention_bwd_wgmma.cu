// Launcher of the sm_90a warpgroup dense backward (bwd_wgmma.cuh): preparation kernel
// (delta = rowsum(dO o O) and lse * log2(e), both transposed to (Hq, N) for the TMA, and
// the fp32 dQ accumulator zeroed), tensor maps, the kernel, and the shared dq conversion.
// dense_backward takes it by default on sm_90 when built for sm_90a; MOBA_DENSE_BWD=mma
// selects the mma.sync backward, MOBA_DENSE_BWD=wgmma insists (docs/kernel_notes.md, "wgmma
// backward"); any other value is an error.
#include <cuda.h>


#include "attention/cuda/attention_cuda.h"
#include "attention/cuda/bwd_wgmma.cuh"
#include "attention/cuda/internal.h"
#include "core/cuda_check.cuh"
#include "core/error.h"

namespace moba::attn::cuda {
namespace {

// cuTensorMapEncodeTiled through the runtime's driver entry point (nothing links libcuda),
// as in attention_fwd_wgmma.cu.
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

// Tiled tensor map, dims and box innermost first; strides[i] = byte stride of dim i + 1.
CUtensorMap encode(CUtensorMapDataType type, const void* base, int rank, const cuuint64_t* dims,
                   const cuuint64_t* strides, const cuuint32_t* box, CUtensorMapSwizzle swz,
                   const char* what) {
  CUtensorMap map;
  const cuuint32_t elem_strides[3] = {1, 1, 1};
  const CUresult r = encode_fn()(&map, type, static_cast<cuuint32_t>(rank), const_cast<void*>(base),
                                 dims, strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                 swz, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                 CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    ::moba::detail::fail(__FILE__, __LINE__, "cuTensorMapEncodeTiled (", what,
                         ") failed with CUresult ", static_cast<int>(r));
  return map;
}

}  // namespace

// Tensor maps and preparation shared with the MoBA wgmma backward
// (attention_bwd_moba_wgmma.cu); declared in internal.h.

// (N, H, D) bf16 as (D, H, N); box 64 columns (128 bytes, swizzled) x 1 head x `rows`.
CUtensorMap wg_map_bf16(const bf16* base, int64_t n_tok, int64_t heads, int64_t D, int rows,
                  const char* what) {
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(D), static_cast<cuuint64_t>(heads),
                              static_cast<cuuint64_t>(n_tok)};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(D * 2),
                                 static_cast<cuuint64_t>(heads * D * 2)};
  const cuuint32_t box[3] = {64, 1, static_cast<cuuint32_t>(rows)};
  return encode(CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, base, 3, dims, strides, box,
                CU_TENSOR_MAP_SWIZZLE_128B, what);
}

// (Hq, n_pad) fp32 rows (transposed lse / delta) as (N, Hq); box `rows` tokens x 1 head,
// no swizzle (rows * 4 bytes, a multiple of 16). Tokens past N read as zeros. The kernel
// starts every box at a multiple of 4 tokens (16 bytes; see WgBwdTraits::kRowBox).
CUtensorMap wgbwd_map_rows(const float* base, int64_t n_tok, int64_t heads, int64_t n_pad, int rows,
                  const char* what) {
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(n_tok), static_cast<cuuint64_t>(heads)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(n_pad * 4)};
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(rows), 1};
  return encode(CU_TENSOR_MAP_DATA_TYPE_FLOAT32, base, 2, dims, strides, box,
                CU_TENSOR_MAP_SWIZZLE_NONE, what);
}

// The fp32 dQ accumulator (N, Hq, D) as (D, Hq, N); box 32 columns (128 bytes, swizzled)
// x 1 head x 64 rows: the reduce-add target of the kernel.
CUtensorMap wgbwd_map_dq(const float* base, int64_t n_tok, int64_t heads, int64_t D) {
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(D), static_cast<cuuint64_t>(heads),
                              static_cast<cuuint64_t>(n_tok)};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(D * 4),
                                 static_cast<cuuint64_t>(heads * D * 4)};
  const cuuint32_t box[3] = {32, 1, 64};
  return encode(CU_TENSOR_MAP_DATA_TYPE_FLOAT32, base, 3, dims, strides, box,
                CU_TENSOR_MAP_SWIZZLE_128B, "dq_acc");
}

WgBwdMaps wgbwd_maps(const Plan& plan, const AttnParams& p, const WgBwdPrep& r, int br, int bc,
                     int row_box) {
  const int64_t N = plan.layout().tokens(), D = plan.layout().head_dim;
  WgBwdMaps m;
  m.q = wg_map_bf16(p.q, N, p.Hq, D, br, "q");
  m.k = wg_map_bf16(p.k, N, p.Hkv, D, bc, "k");
  m.v = wg_map_bf16(p.v, N, p.Hkv, D, bc, "v");
  m.dout = wg_map_bf16(p.dout, N, p.Hq, D, br, "dout");
  m.lse = wgbwd_map_rows(r.lse_t, N, p.Hq, r.n_pad, row_box, "lse");
  m.delta = wgbwd_map_rows(r.delta_t, N, p.Hq, r.n_pad, row_box, "delta");
  m.dq = wgbwd_map_dq(p.dq_acc, N, p.Hq, D);
  return m;
}

void wg_configure(const void* kernel, int threads, int reg_pool_needed, int smem_bytes,
                  const char* what) {
  // setmaxnreg.inc blocks until the CTA's register pool (numRegs x threads, fixed at
  // launch) can supply the consumers: refuse a kernel compiled with fewer registers (or a
  // build without sm_90a, where the kernel is a trap) instead of hanging.
  cudaFuncAttributes fa{};
  CUDA_CHECK(cudaFuncGetAttributes(&fa, kernel));
  if (fa.numRegs * threads < reg_pool_needed)
    ::moba::detail::fail(__FILE__, __LINE__, what, ": kernel compiled with ", fa.numRegs,
                         " registers per thread (needs ", (reg_pool_needed + threads - 1) / threads,
                         " for setmaxnreg; is MOBA_CUDA_GENCODE sm_90a?)");
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes));
}

namespace {

// One warp per (token, query head) row: delta = rowsum(dO o O) and lse * log2(e), written
// transposed at [head * n_pad + token]; the row of the fp32 dQ accumulator zeroed.
template <int D>
__global__ void wg_prep_kernel(const __nv_bfloat16* __restrict__ o,
                               const __nv_bfloat16* __restrict__ dout,
                               const float* __restrict__ lse, int rows, int Hq, int n_pad,
                               float* __restrict__ delta_t, float* __restrict__ lse_t,
                               float* __restrict__ dq_acc) {
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= rows) return;
  const float acc = detail::warp_row_delta_zero_dq<D>(o, dout, dq_acc, row, lane);
  if (lane == 0) {
    const int tok = row / Hq, h = row % Hq;
    const size_t t = static_cast<size_t>(h) * n_pad + tok;
    delta_t[t] = acc;
    lse_t[t] = lse[row] * 1.4426950408889634f;
  }
}

constexpr const char* kWhat = "MOBA_DENSE_BWD=wgmma";

template <int D>
void launch(const Plan& plan, const AttnParams& p, const WgBwdPrep& r, cudaStream_t stream) {
  wgbwd_launch<WgBwdTraits<D>, attn_bwd_wgmma_kernel<D>>(plan, p, r, kWhat, stream);
}

}  // namespace

WgBwdPrep wgbwd_prepare(Plan& plan, AttnParams& p, cudaStream_t stream) {
  const Layout& l = plan.layout();
  const int64_t D = l.head_dim;
  const int64_t N = l.tokens(), rows = N * l.num_q_heads;
  WgBwdPrep r;
  r.n_pad = (N + 3) / 4 * 4;  // 16-byte row stride of the transposed arrays
  p.dq_acc = static_cast<float*>(plan.scratch(kSlotDqAcc, sizeof(float) * rows * D));
  r.delta_t = static_cast<float*>(plan.scratch(kSlotDeltaT, sizeof(float) * p.Hq * r.n_pad));
  r.lse_t = static_cast<float*>(plan.scratch(kSlotLseT, sizeof(float) * p.Hq * r.n_pad));
  p.delta = r.delta_t;  // not read by the kernels (they take the tensor maps)

  const int warps = 8;
  const unsigned blocks = static_cast<unsigned>((rows + warps - 1) / warps);
  if (D == 64)
    wg_prep_kernel<64><<<blocks, warps * 32, 0, stream>>>(p.o, p.dout, p.lse, static_cast<int>(rows),
                                                          p.Hq, static_cast<int>(r.n_pad), r.delta_t, r.lse_t, p.dq_acc);
  else
    wg_prep_kernel<128><<<blocks, warps * 32, 0, stream>>>(p.o, p.dout, p.lse, static_cast<int>(rows),
                                                           p.Hq, static_cast<int>(r.n_pad), r.delta_t, r.lse_t, p.dq_acc);
  CUDA_CHECK_LAUNCH();
  mark_phase("bwd_delta_zero_dq", stream);
  return r;
}

void wgbwd_run(Plan& plan, AttnParams p, const char* what, const char* phase,
               WgBwdLaunch launch64, WgBwdLaunch launch128, cudaStream_t stream) {
  wg_require_sm90(what);
  const Layout& l = plan.layout();
  const int64_t D = l.head_dim;
  if (D != 64 && D != 128)
    ::moba::detail::fail(__FILE__, __LINE__, what, ": head dim ", D, " (64 or 128)");
  const int64_t rows = l.tokens() * l.num_q_heads;
  const WgBwdPrep r = wgbwd_prepare(plan, p, stream);

  (D == 64 ? launch64 : launch128)(plan, p, r, stream);
  mark_phase(phase, stream);

  dq_convert(p, rows, D, stream);
  mark_phase("bwd_dq_convert", stream);
}

void dense_backward_wgmma(Plan& plan, AttnParams p, cudaStream_t stream) {
  wgbwd_run(plan, p, kWhat, "bwd_dense_wgmma", launch<64>, launch<128>, stream);
}

}  // namespace moba::attn::cuda
