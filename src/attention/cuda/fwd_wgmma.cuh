// Dense causal flash-attention forward for Hopper (sm_90a): warpgroup MMAs fed by the
// bulk tensor copy engine (TMA) through an mbarrier ring, FA3-style. Same contract as the
// kDense mode of fwd_kernel.cuh: out (N, Hq, D) bf16, lse (N, Hq) fp32 natural log,
// softmax scale from the plan, GQA, varlen (cu_seqlens). Tested on the H100 (see
// docs/kernel_notes.md, "v9").
//
// CTA = 3 warpgroups, 128 query rows of one head:
//   warpgroups 0, 1 (consumers): 64 query rows each. Per key tile of Bc = 128 (the steps
//   shared with the MoBA kernels, fwd_wgmma_step.cuh):
//     S = Q K^T        wgmma m64n128k16, A = Q and B = K from shared memory (K-major,
//                      128-byte swizzle), D/16 k-steps, fp32 accumulators in registers;
//     online softmax   on the accumulator layout (each row lives in one quad of lanes),
//                      causal mask only on the diagonal (last) tile;
//     O += P V         wgmma m64nDk16, A = P from registers (bf16), B = V from shared
//                      memory (MN-major, imm-trans-b = 1), Bc/16 k-steps;
//     then the consumer frees the ring slot (mbarrier arrive).
//   warpgroup 2 (producer): one thread issues the TMA copies: Q once, then K and V of
//     every tile into a ring of kStages slots; it waits for a slot to be freed by both
//     consumers ("empty" barrier) and arms the slot's "full" barriers with the byte count.
// Registers: setmaxnreg gives the producer 24 and each consumer thread 240.
// Varlen without bounds checks in the copies: query and key boxes may run past the
// sequence (into the next sequence's tokens, or past N where TMA fills zeros); such keys
// are later than every real query row of the tile, so the causal mask removes them, and
// rows past the sequence are never written.
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>

#include <cmath>

#include "attention/cuda/fwd_wgmma_step.cuh"
#include "attention/cuda/mma.cuh"
#include "attention/cuda/params.h"
#include "attention/cuda/wgmma.cuh"

namespace moba::attn::cuda {

template <int D>
struct WgFwdTraits {
  static_assert(D == 64 || D == 128, "wgmma forward: head dim 64 or 128");
  static constexpr int kBr = 128;           // query rows per CTA (2 consumer warpgroups)
  static constexpr int kBc = 128;           // keys per tile
  static constexpr int kStages = D == 64 ? 3 : 2;  // K/V ring depth
  static constexpr int kThreads = 384;      // 2 consumer + 1 producer warpgroups
  // setmaxnreg targets (PTX ISA "setmaxnreg": multiple of 8 in [24, 256], executed by
  // every warp of a warpgroup). setmaxnreg.inc blocks until the CTA's register pool can
  // supply the registers, and the pool is what the CTA got at launch (numRegs x
  // kThreads): 128 x 24 + 256 x 240 = 64512 = 384 x 168, so the kernel must be compiled
  // to (at least) the 168 of __launch_bounds__(384, 1), or the consumers wait forever. The
  // launcher checks numRegs (attention_fwd_wgmma.cu).
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = 240;
  static constexpr int kRegPoolNeeded = 128 * kProducerRegs + 256 * kConsumerRegs;
  static_assert(kProducerRegs % 8 == 0 && kConsumerRegs % 8 == 0 && kProducerRegs >= 24 &&
                    kConsumerRegs <= 256,
                "setmaxnreg operand: multiple of 8 in [24, 256]");
  static_assert(kRegPoolNeeded <= 65536, "register file of one SM");
  static constexpr int kColBlocks = D / 64; // 128-byte swizzle column blocks (TMA boxes)
  static constexpr int kQBytes = kBr * D * 2;
  static constexpr int kTileBytes = kBc * D * 2;  // one K (or V) tile
  static constexpr int kBarBytes = 8 * (1 + 3 * kStages);
  // +1024: the dynamic shared-memory base is aligned up to 1024 bytes in the kernel.
  static constexpr int kSmemBytes = 1024 + kQBytes + 2 * kStages * kTileBytes + kBarBytes;
  static_assert(kSmemBytes <= 227 * 1024, "shared memory");
};

// PP: the consumer warpgroups' ping-pong (fwd_wgmma_step.cuh; MOBA_FWD_PINGPONG=1).
template <int D, bool PP = false>
__global__ void __launch_bounds__(384, 1)
    attn_fwd_wgmma_kernel(const __grid_constant__ CUtensorMap tm_q,
                          const __grid_constant__ CUtensorMap tm_k,
                          const __grid_constant__ CUtensorMap tm_v, const AttnParams p) {
#if MOBA_WGMMA_ENABLED
  using namespace wg;
  using T = WgFwdTraits<D>;
  constexpr int Br = T::kBr, Bc = T::kBc, ST = T::kStages, CB = T::kColBlocks;
  static_assert(T::kTileBytes == Bc * D * 2, "ring slots as fwd_wgmma_step.cuh lays them out");
  extern __shared__ unsigned char smem_raw[];
  // 1024-byte alignment: swizzle atoms (8 rows x 128 bytes) must start on it.
  const uint32_t raw_addr = smem_addr(smem_raw);
  unsigned char* smem = smem_raw + ((1024 - (raw_addr & 1023)) & 1023);
  __nv_bfloat16* sQ = reinterpret_cast<__nv_bfloat16*>(smem);  // [CB][Br][64]
  __nv_bfloat16* sK = sQ + Br * D;                              // [ST][CB][Bc][64]
  __nv_bfloat16* sV = sK + ST * Bc * D;                         // [ST][CB][Bc][64]
  uint64_t* bars = reinterpret_cast<uint64_t*>(sV + ST * Bc * D);
  uint64_t* full_q = bars;
  uint64_t* full_k = bars + 1;           // [ST]
  uint64_t* full_v = bars + 1 + ST;      // [ST]
  uint64_t* empty = bars + 1 + 2 * ST;   // [ST]

  // Tile of this CTA (as the mma.sync kernel: the last query tiles first).
  const int b = blockIdx.z;
  const int seq_start = p.cu_seqlens[b];
  const int len = p.cu_seqlens[b + 1] - seq_start;
  const int m = p.heads_fastest ? gridDim.y - 1 - blockIdx.y : gridDim.x - 1 - blockIdx.x;
  if (m * Br >= len) return;  // the whole CTA leaves before any barrier exists
  const int head = p.heads_fastest ? blockIdx.x : blockIdx.y;
  const int kvh = head / p.group;
  const int first_tok = seq_start + m * Br;
  const int count = min(Br, len - m * Br);
  const int n_tiles = (first_tok + count - seq_start + Bc - 1) / Bc;  // = m + 1 (Br == Bc)

  const int tid = threadIdx.x;
  const int wgi = tid / 128;  // warpgroup
  if (tid == 0) {
    mbar_init(full_q, 1);
    wgfwd_init_ring<ST>(full_k, full_v, empty);
    mbar_fence_init();
  }
  __syncthreads();

  if (wgi == 2) {
    // ---------------- producer ----------------
    setmaxnreg_dec<T::kProducerRegs>();
    if (tid == 256) {
      tma_prefetch_desc(&tm_q);
      tma_prefetch_desc(&tm_k);
      tma_prefetch_desc(&tm_v);
      mbar_arrive_expect_tx(full_q, T::kQBytes);
#pragma unroll
      for (int cb = 0; cb < CB; ++cb) tma_load_3d(sQ + cb * Br * 64, &tm_q, cb * 64, head, first_tok, full_q);
      for (int j = 0; j < n_tiles; ++j) {
        int n = j;  // (advanced by the call; the loop counts for itself)
        wgfwd_load_kv<D, Bc, ST>(n, sK, sV, full_k, full_v, empty, &tm_k, &tm_v, kvh, seq_start + j * Bc);
      }
    }
    return;
  }

  // ---------------- consumers ----------------
  setmaxnreg_inc<T::kConsumerRegs>();
  const int lane = tid % 32, wi = (tid / 32) % 4;
  const int g = lane / 4, qd = lane % 4;
  const int wg_row0 = wgi * 64;              // first row of this warpgroup in the tile
  const int row0 = wg_row0 + wi * 16 + g;    // this thread's rows: row0, row0 + 8
  const int tok[2] = {first_tok + row0, first_tok + row0 + 8};

  const uint32_t q_addr = smem_addr(sQ) + wg_row0 * 128;
  const uint32_t k_addr = smem_addr(sK);
  const uint32_t v_addr = smem_addr(sV);

  float o[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};
  float s[Bc / 2];

  mbar_wait(full_q, 0);
  // The key tiles; the ring position from the loop counter (fwd_wgmma_step.cuh). Both
  // warpgroups run the same n_tiles (the ping-pong's token needs it).
  if (PP) {
    wgfwd_pp_first_token(wgi);
    wgfwd_pp_take(wgi);
  }
  for (int j = 0; j < n_tiles; ++j)
    wgfwd_key_tile<D, Br, Bc, true, PP>(q_addr, k_addr, v_addr, full_k, full_v, empty, j % ST,
                                        (j / ST) & 1, seq_start + j * Bc, first_tok + wg_row0, tok,
                                        qd, p.scale_log2, s, o, row_max, row_sum, PP ? wgi : 0);
  if (PP) wgfwd_pp_pass(wgi);

  // Epilogue: normalise and write the rows of the sequence; lse in natural log.
  constexpr float kLn2 = 0.6931471805599453f;
  const int tok_end = first_tok + count;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float l = row_sum[h] + __shfl_xor_sync(0xffffffffu, row_sum[h], 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    if (tok[h] >= tok_end) continue;
    const float inv = l > 0.f ? 1.f / l : 0.f;
    const float lse = l > 0.f ? fmaf(row_max[h], p.scale_log2, log2f(l)) * kLn2 : -INFINITY;
    const size_t row = static_cast<size_t>(tok[h]) * p.Hq + head;
    __nv_bfloat16* dst = p.o + row * D;
#pragma unroll
    for (int i = 0; i < D / 8; ++i)
      *reinterpret_cast<uint32_t*>(dst + 8 * i + 2 * qd) =
          detail::pack_bf16(o[4 * i + 2 * h] * inv, o[4 * i + 2 * h + 1] * inv);
    if (qd == 0) p.lse[row] = lse;
  }
#else
  // Built for a target without wgmma (not sm_90a): the launcher must not get here.
  __trap();
#endif
}

}  // namespace moba::attn::cuda
