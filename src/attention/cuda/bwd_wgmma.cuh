// Dense causal flash-attention backward for Hopper (sm_90a): warpgroup MMAs fed by the
// bulk tensor copy engine (TMA) through an mbarrier ring, FA3-style, written here from the
// maths and the PTX ISA. Same contract as the dense path of bwd_kernel.cuh: dq, dk, dv
// (bf16), fp32 dQ accumulator converted afterwards (dq_acc holds dQ / scale), lse in
// natural log, softmax scale from the plan, GQA, varlen. COMPILE-ONLY so far (see
// docs/kernel_notes.md, "wgmma backward").
//
// CTA = 3 warpgroups and one tile of Bc = 128 keys of one (sequence, kv head); it walks
// every query tile that attends to them: for each query head of the kv group, query tiles
// of Br rows from the key tile's first token to the end of the sequence (Br = 64 at
// D = 128, 128 at D = 64).
//   warpgroups 0, 1 (consumers): keys 64w..64w+63 each (w = warpgroup). Per query tile,
//   with the key index as wgmma's M ("swapped" products, so that P^T and dS^T come out of
//   the MMAs in the layout of the next MMA's A operand):
//     S^T  = K_w Q^T        wgmma m64n{Br}k16 SS: A = K (K-major), B = Q (K-major)
//     dP^T = V_w dO^T       same with V, dO
//     P^T  = exp2(S^T * scale*log2e - lse*log2e)  (lse*log2e precomputed per row)
//     dS^T = P^T o (dP^T - delta)                  on the accumulator layout, masked
//                                                  (causal, rows past the sequence) on
//                                                  tiles that need it
//     dV  += P^T dO          wgmma m64n{D}k16 RS: A = P^T (registers, bf16), B = dO (MN-major)
//     dK  += dS^T Q          same with dS^T, Q; dK and dV stay in registers for the CTA
//     dS^T -> shared memory (bf16, 128-byte swizzle; two buffers, alternating)
//     dQ   = dS K            wgmma m64n64k16 SS with both operands MN-major (transposed):
//                            A = dS read from the dS^T tile, B = K; split between the
//                            warpgroups (D = 128: columns 64w..; D = 64: query rows 64w..)
//     dQ -> shared memory (fp32, swizzled boxes of 64 rows x 32 columns) -> TMA
//           reduce-add into the fp32 accumulator (cp.reduce.async.bulk.tensor).
//   warpgroup 2 (producer): one thread issues the TMA copies: K and V once, then for each
//   query tile Q, dO (D/64 boxes each) and the tile's lse*log2e and delta rows (from
//   transposed (Hq, N) copies written by the preparation kernel) into a ring of kStages
//   slots with full / empty mbarriers.
// Registers: setmaxnreg gives the producer 24 and each consumer thread 240.
//
// Varlen: the copies have no bounds of their own. A query box may run into the next
// sequence (real data) or past N (zero fill); a key box likewise. Masks by index make
// every such element contribute nothing: P^T = dS^T = 0 where key > query or where the
// query is past the sequence end, so dQ rows of queries past the end are exact zeros
// (the reduce-add into the next sequence's rows adds 0; rows past N are skipped by the
// copy engine), and dK / dV rows of keys past the end are never written.
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>

#include <cmath>

#include "attention/cuda/bwd_wgmma_common.cuh"
#include "attention/cuda/mma.cuh"
#include "attention/cuda/params.h"
#include "attention/cuda/wgmma.cuh"

namespace moba::attn::cuda {

template <int D>
__global__ void __launch_bounds__(384, 1)
    attn_bwd_wgmma_kernel(const __grid_constant__ CUtensorMap tm_q,
                          const __grid_constant__ CUtensorMap tm_k,
                          const __grid_constant__ CUtensorMap tm_v,
                          const __grid_constant__ CUtensorMap tm_do,
                          const __grid_constant__ CUtensorMap tm_lse,
                          const __grid_constant__ CUtensorMap tm_delta,
                          const __grid_constant__ CUtensorMap tm_dq, const AttnParams p) {
#if MOBA_WGMMA_ENABLED
  using namespace wg;
  using T = WgBwdTraits<D>;
  constexpr int Br = T::kBr, Bc = T::kBc, ST = T::kStages, CB = T::kColBlocks;
  extern __shared__ unsigned char smem_raw[];
  const uint32_t raw_addr = smem_addr(smem_raw);
  unsigned char* smem = smem_raw + ((1024 - (raw_addr & 1023)) & 1023);
  __nv_bfloat16* sK = reinterpret_cast<__nv_bfloat16*>(smem + T::kOffK);    // [CB][Bc][64]
  __nv_bfloat16* sV = reinterpret_cast<__nv_bfloat16*>(smem + T::kOffV);    // [CB][Bc][64]
  __nv_bfloat16* sQ = reinterpret_cast<__nv_bfloat16*>(smem + T::kOffQ);    // [ST][CB][Br][64]
  __nv_bfloat16* sdO = reinterpret_cast<__nv_bfloat16*>(smem + T::kOffDo);  // [ST][CB][Br][64]
  float* sLse = reinterpret_cast<float*>(smem + T::kOffLse);        // [ST][kRowBytes / 4]
  float* sDelta = reinterpret_cast<float*>(smem + T::kOffDelta);    // [ST][kRowBytes / 4]
  constexpr int RS = T::kRowBytes / 4;  // floats between ring slots of lse / delta
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + T::kOffBar);
  uint64_t* full_kv = bars;
  uint64_t* full = bars + 1;        // [ST]
  uint64_t* empty = bars + 1 + ST;  // [ST]

  // Key tile of this CTA: (kv head, tile n, sequence b); tile 0 (the most query tiles)
  // first, heads fastest below 64K tokens, as the mma.sync backward.
  const int b = blockIdx.z;
  const int kvh = p.heads_fastest ? blockIdx.x : blockIdx.y;
  const int n = p.heads_fastest ? blockIdx.y : blockIdx.x;
  const int seq_start = p.cu_seqlens[b], seq_end = p.cu_seqlens[b + 1];
  if (n * Bc >= seq_end - seq_start) return;  // the whole CTA leaves before any barrier
  const int key0 = seq_start + n * Bc;
  const int tiles = (seq_end - key0 + Br - 1) / Br;  // query tiles per head (>= 1)
  const int n_iter = tiles * p.group;                // iteration it: head it / tiles

  const int tid = threadIdx.x;
  const int wgi = tid / 128;
  if (tid == 0) {
    mbar_init(full_kv, 1);
    for (int s = 0; s < ST; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], 256);  // every consumer thread arrives once per use
    }
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
      tma_prefetch_desc(&tm_do);
      tma_prefetch_desc(&tm_lse);
      tma_prefetch_desc(&tm_delta);
      mbar_arrive_expect_tx(full_kv, 2 * T::kKVBytes);
#pragma unroll
      for (int cb = 0; cb < CB; ++cb) {
        tma_load_3d(sK + cb * Bc * 64, &tm_k, cb * 64, kvh, key0, full_kv);
        tma_load_3d(sV + cb * Bc * 64, &tm_v, cb * 64, kvh, key0, full_kv);
      }
      for (int it = 0; it < n_iter; ++it) {
        const int s = it % ST;
        const int h = kvh * p.group + it / tiles;
        const int q0 = key0 + (it % tiles) * Br;
        mbar_wait(&empty[s], ((it / ST) & 1) ^ 1);  // parity 1 passes on a fresh barrier
        mbar_arrive_expect_tx(&full[s], T::kStageTx);
#pragma unroll
        for (int cb = 0; cb < CB; ++cb) {
          tma_load_3d(sQ + s * Br * D + cb * Br * 64, &tm_q, cb * 64, h, q0, &full[s]);
          tma_load_3d(sdO + s * Br * D + cb * Br * 64, &tm_do, cb * 64, h, q0, &full[s]);
        }
        tma_load_2d(sLse + s * RS, &tm_lse, q0 & ~3, h, &full[s]);  // 16-byte aligned start
        tma_load_2d(sDelta + s * RS, &tm_delta, q0 & ~3, h, &full[s]);
      }
    }
    return;
  }

  // ---------------- consumers ----------------
  setmaxnreg_inc<T::kConsumerRegs>();
  // Keys 64w..64w+63 of the tile. Read through a shuffle from lane 0 so that the compiler
  // knows it is warp-uniform: the descriptors built from it then live in uniform
  // registers instead of taking 16 of the consumers' registers.
  const int w = __shfl_sync(0xffffffffu, wgi, 0);
  const int wg_tid = tid % 128;
  const int lane = tid % 32, wi = wg_tid / 32;
  const int g = lane / 4, qd = lane % 4;
  const int kw0 = key0 + 64 * w;           // first key of this warpgroup
  const int krow0 = kw0 + 16 * wi + g;     // this thread's keys (accumulator rows): +0, +8

  const uint32_t k_addr = smem_addr(sK), v_addr = smem_addr(sV);
  const uint32_t q_addr = smem_addr(sQ), do_addr = smem_addr(sdO);
  const uint32_t ds_addr = smem_addr(smem + T::kOffDs);
  unsigned char* sDq = smem + T::kOffDq + w * T::kDqWgBytes;  // this warpgroup's boxes
  // dQ split: D = 128 (Br = 64): warpgroup w takes columns 64w..64w+63 of all 64 rows
  // (A = the whole dS^T tile, B = column block w of K); D = 64 (Br = 128): query rows
  // 64w..64w+63, all 64 columns (A = column block w of the dS^T tile, B = K).
  constexpr bool kSplitCols = D == 128;
  const uint32_t dq_a_off = kSplitCols ? 0u : static_cast<uint32_t>(w * Bc * 128);
  const uint32_t dq_b_off = kSplitCols ? static_cast<uint32_t>(w * Bc * 128) : 0u;
  const int dq_col0 = kSplitCols ? 64 * w : 0;
  const int dq_row_off = kSplitCols ? 0 : 64 * w;

  float dv[D / 2], dk[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) dv[i] = dk[i] = 0.f;

  if (wg_tid == 0) tma_prefetch_desc(&tm_dq);  // this thread issues the reduce-adds
  mbar_wait(full_kv, 0);
  for (int it = 0; it < n_iter; ++it) {
    const int s = it % ST;
    const uint32_t par = (it / ST) & 1;
    const int h = kvh * p.group + it / tiles;
    const int q0 = key0 + (it % tiles) * Br;  // first query token of the tile
    const uint32_t qs = q_addr + s * T::kQBytes, dos = do_addr + s * T::kQBytes;
    const float* lse_s = sLse + s * RS + (q0 & 3);  // the box started at q0 & ~3
    const float* dl_s = sDelta + s * RS + (q0 & 3);

    // The MMA steps (bwd_wgmma_common.cuh): S^T, dP^T; P^T with the masks: causal
    // (key > query) and queries past the sequence end, only on tiles reaching past this
    // warpgroup's first key or past the end; dS^T and the A fragments; dV, dK.
    float st[Br / 2], dpt[Br / 2];
    mbar_wait(&full[s], par);
    wgbwd_scores<D>(st, dpt, k_addr, v_addr, qs, dos, w);
    const bool need_mask = (kw0 + 63 > q0) || (q0 + Br > seq_end);
    wgbwd_probs<Br>(st, lse_s, p.scale_log2, qd, need_mask, [&](int i, int c) {
      const int qt = q0 + 8 * i + 2 * qd + (c & 1);
      const int kt = krow0 + 8 * (c >> 1);
      return kt > qt || qt >= seq_end;
    });
    uint32_t pa[Br / 16][4], dsa[Br / 16][4];
    wgbwd_dsoftmax<Br>(st, dpt, dl_s, qd, pa, dsa);
    wgbwd_dvdk<D>(dv, dk, pa, dsa, qs, dos);

    // dS^T into buffer it % 2 while those run, then visible to the async proxy (wgmma)
    // and to the other warpgroup. Two buffers alternate, so a warpgroup never overwrites
    // the tile the other one's dQ MMA may still read.
    wgbwd_store_ds<Br, Bc>(smem + T::kOffDs + (it & 1) * T::kDsBytes, dsa, w, wi, g, qd);
    fence_proxy_async();      // generic-proxy writes -> visible to wgmma (async proxy)
    named_bar_sync(1, 256);   // both warpgroups' dS^T rows are in buffer it % 2

    // dQ (64 x 64 of this warpgroup) = dS K.
    float dq[32];
    wgbwd_dq_mma<Bc>(dq, ds_addr + (it & 1) * T::kDsBytes + dq_a_off, k_addr + dq_b_off);
    wgmma_wait<1>();          // dV / dK done: slot s (Q, dO, lse, delta) no longer read
    mbar_arrive(&empty[s]);
    wgmma_wait<0>();
    fence_regs(dq);

    // dQ -> the two swizzled fp32 boxes of this warpgroup, then one thread adds them into
    // dq_acc (reduce-add, atomic per element; rows past N skipped).
    if (wg_tid == 0) bulk_wait_read<0>();  // the previous tile's boxes have been read
    named_bar_sync(2 + w, 128);
    wgbwd_stage_dq<T::kDqBoxBytes>(sDq, dq, wi, g, qd);
    fence_proxy_async();
    named_bar_sync(2 + w, 128);
    // Rows at or past the sequence end hold exact zeros: a box starting there (D = 64's
    // second half of a tile that ends the sequence) is not sent, which also keeps every
    // reduce-add at least partly inside the tensor.
    if (wg_tid == 0) {
      if (q0 + dq_row_off < seq_end) {
#pragma unroll
        for (int box = 0; box < 2; ++box)
          tma_reduce_add_3d(&tm_dq, dq_col0 + 32 * box, h, q0 + dq_row_off,
                            sDq + box * T::kDqBoxBytes);
      }
      bulk_commit();
    }
  }
  // The reductions must be complete (their shared-memory source alive) before the CTA
  // exits.
  if (wg_tid == 0) bulk_wait<0>();

  // Epilogue: dK * scale, dV to bf16; keys past the sequence end are not written.
  wgbwd_epilogue<D>(dv, dk, p, krow0, seq_end, kvh, qd);
#else
  // Built for a target without wgmma (not sm_90a): the launcher must not get here.
  __trap();
#endif
}

}  // namespace moba::attn::cuda
