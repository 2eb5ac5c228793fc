// Dense causal flash-attention backward for Hopper (sm_90a): warpgroup MMAs fed by the
// bulk tensor copy engine (TMA) through an mbarrier ring, FA3-style, written here from the
// maths and the PTX ISA. Same contract as the dense path of bwd_kernel.cuh: dq, dk, dv
// (bf16), fp32 dQ accumulator converted afterwards (dq_acc holds dQ / scale), lse in
// natural log, softmax scale from the plan, GQA, varlen. Tested on the H100 (see
// docs/kernel_notes.md, "v10").
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
// The steps themselves (traits, shared-memory map, TMA loads, MMA sequence, dQ reduce-add,
// epilogue) live in bwd_wgmma_common.cuh, shared with the MoBA kernel (bwd_moba_wgmma.cuh).
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
  constexpr int Br = T::kBr, Bc = T::kBc, ST = T::kStages;
  extern __shared__ unsigned char smem_raw[];
  const WgBwdSmem<D> sm(smem_raw);

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

  sm.init_barriers(1);  // full[s]: the producer's arrive.expect_tx only

  if (threadIdx.x / 128 == 2) {
    // ---------------- producer: one thread ----------------
    setmaxnreg_dec<T::kProducerRegs>();
    if (threadIdx.x == 256) {
      sm.load_kv(&tm_q, &tm_k, &tm_v, &tm_do, &tm_lse, &tm_delta, kvh, key0);
      for (int it = 0; it < n_iter; ++it) {
        const int s = it % ST;
        mbar_wait(&sm.empty[s], ((it / ST) & 1) ^ 1);  // parity 1 passes on a fresh barrier
        sm.load_tile(&tm_q, &tm_do, &tm_lse, &tm_delta, s, kvh * p.group + it / tiles,
                     key0 + (it % tiles) * Br);
      }
    }
    return;
  }

  // ---------------- consumers ----------------
  setmaxnreg_inc<T::kConsumerRegs>();
  const WgBwdConsumer<D> c(sm, key0);
  const int qd = c.qd;

  float dv[D / 2], dk[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) dv[i] = dk[i] = 0.f;

  if (c.wg_tid == 0) tma_prefetch_desc(&tm_dq);  // this thread issues the reduce-adds
  mbar_wait(sm.full_kv, 0);
  for (int it = 0; it < n_iter; ++it) {
    const int s = it % ST;
    const uint32_t par = (it / ST) & 1;
    const int h = kvh * p.group + it / tiles;
    const int q0 = key0 + (it % tiles) * Br;  // first query token of the tile
    const uint32_t qs = c.q_addr + s * T::kQBytes, dos = c.do_addr + s * T::kQBytes;
    const float* lse_s = sm.sLse + s * sm.kRS + (q0 & 3);  // the box started at q0 & ~3
    const float* dl_s = sm.sDelta + s * sm.kRS + (q0 & 3);

    // The MMA steps (bwd_wgmma_common.cuh): S^T, dP^T; P^T with the masks: causal
    // (key > query) and queries past the sequence end, only on tiles reaching past this
    // warpgroup's first key or past the end; dS^T and the A fragments; dV, dK.
    // (Kept as separate calls in both kernels: folded into one helper, ptxas spilled 4
    // bytes at D = 64, where the consumers use 237 of their 240 registers.)
    float st[Br / 2], dpt[Br / 2];
    mbar_wait(&sm.full[s], par);
    wgbwd_scores<D>(st, dpt, c.k_addr, c.v_addr, qs, dos, c.w);
    const bool need_mask = (c.kw0 + 63 > q0) || (q0 + Br > seq_end);
    wgbwd_probs<Br>(st, lse_s, p.scale_log2, qd, need_mask, [&](int i, int cc) {
      const int qt = q0 + 8 * i + 2 * qd + (cc & 1);
      const int kt = c.krow0 + 8 * (cc >> 1);
      return kt > qt || qt >= seq_end;
    });
    uint32_t pa[Br / 16][4], dsa[Br / 16][4];
    wgbwd_dsoftmax<Br>(st, dpt, dl_s, qd, pa, dsa);
    wgbwd_dvdk<D>(dv, dk, pa, dsa, qs, dos);

    // dS^T into buffer it % 2 while those run, then visible to the async proxy (wgmma)
    // and to the other warpgroup. Two buffers alternate, so a warpgroup never overwrites
    // the tile the other one's dQ MMA may still read.
    wgbwd_store_ds<Br, Bc>(sm.base + T::kOffDs + (it & 1) * T::kDsBytes, dsa, c.w, c.wi, c.g, qd);
    fence_proxy_async();      // generic-proxy writes -> visible to wgmma (async proxy)
    named_bar_sync(1, 256);   // both warpgroups' dS^T rows are in buffer it % 2

    // dQ (64 x 64 of this warpgroup) = dS K.
    float dq[32];
    wgbwd_dq_mma<Bc>(dq, c.ds_addr + (it & 1) * T::kDsBytes + c.dq_a_off, c.k_addr + c.dq_b_off);
    wgmma_wait<1>();          // dV / dK done: slot s (Q, dO, lse, delta) no longer read
    mbar_arrive(&sm.empty[s]);
    wgmma_wait<0>();
    fence_regs(dq);

    // dQ into dq_acc by TMA reduce-add. Rows at or past the sequence end hold exact
    // zeros: a box starting there (D = 64's second half of a tile that ends the sequence)
    // is not sent, which also keeps every reduce-add at least partly inside the tensor.
    wgbwd_dq_reduce_add<D>(c, dq, &tm_dq, h, q0 + c.dq_row_off, q0 + c.dq_row_off < seq_end);
  }
  // The reductions must be complete (their shared-memory source alive) before the CTA
  // exits.
  if (c.wg_tid == 0) bulk_wait<0>();

  // Epilogue: dK * scale, dV to bf16; keys past the sequence end are not written.
  wgbwd_epilogue<D>(dv, dk, p, c.krow0, seq_end, kvh, qd);
#else
  // Built for a target without wgmma (not sm_90a): the launcher must not get here.
  __trap();
#endif
}

}  // namespace moba::attn::cuda
