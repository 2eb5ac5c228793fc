// MoBA backward for Hopper (sm_90a): the CTA of the dense warpgroup backward
// (bwd_wgmma.cuh: 3 warpgroups, one tile of Bc = 128 keys of one (sequence, kv head), two
// consumer warpgroups of 64 keys, one producer warpgroup, setmaxnreg 24 / 240, the same
// MMAs from bwd_wgmma_common.cuh), walking MoBA's two sources of query tiles. Same
// contract and results as the MoBA path of bwd_kernel.cuh (dq, dk, dv in bf16, dQ through
// the fp32 accumulator). Tested on the H100 (docs/kernel_notes.md, "v11").
//
// Query tiles of Br rows (64 at D = 128, 128 at D = 64), in this order:
//   (1) causal tiles of the current block: for each query head of the kv group, the
//       queries from the key tile's first token to the end of its MoBA block (bounded by
//       the sequence end), q_hi. Loaded by TMA as in the dense kernel (Q, dO boxes; lse,
//       delta boxes from the transposed arrays); masked by index: key > query, or query
//       at or past q_hi (the box runs into the next block, the next sequence or past N).
//       dQ: staged in shared memory and TMA reduce-added, as in the dense kernel.
//   (2) gathered tiles: the entries p.entries[e_lo..e_hi) of the bucket (this block, kv
//       head), Br per tile; entry e is (row = e / kp: token = row / Hq, head = row % Hq).
//       TMA cannot gather rows, so all 128 producer threads load them with 16-byte
//       cp.async copies, placing each 16-byte chunk at its 128B-swizzled position by hand
//       (chunk c of tile row r of a 64-column block at chunk c ^ (r % 8), the pattern the
//       TMA writes and wgmma reads); lse * log2 e and delta of each row with 4-byte
//       cp.async from the same transposed arrays. Padding rows past e_hi are zero-filled
//       (src-size 0) and masked by index, so they contribute exact zeros. dQ rows are
//       scattered: added from registers with red.global.add.v2.f32 (as the mma.sync
//       kernel), or, with kBulkDq (v23, MOBA_MOBA_BWD_DQ=bulk; docs/kernel_notes.md),
//       staged in the warpgroup's dQ buffer unswizzled (row r of each 32-column box at
//       r x 128 bytes) and added by rows with the non-tensor bulk reduce, one 128-byte piece
//       (a row's 32 columns of one box) per thread: 128 pieces per warpgroup and tile
//       instead of 16 red.v2 per thread. Every key of the block precedes every gathered
//       query: no causal mask.
//
// Ring slot protocol (kStages slots of Q, dO, lse, delta, row ids; mbarriers full[s] with
// 128 arrivals = every producer thread once per use, empty[s] with 256 = every consumer
// thread): every producer thread waits empty[s] before touching slot s or arriving on
// full[s] (so no arrival can land in the wrong phase).
//   causal tile:   thread 0: arrive.expect_tx(bytes of the boxes) + the TMA copies; the
//                  other 127: plain arrive.
//   gathered tile: threads r < Br: row id of row r to shared memory, lse / delta
//                  cp.async; producer named barrier; every thread: 8 + 8 cp.async of
//                  16 bytes (Q, dO), cp.async.wait_group 0, fence.proxy.async (generic
//                  proxy writes -> visible to wgmma, which reads through the async proxy),
//                  then a plain (release) arrive.
// Consumers wait full[s] (acquire), run the MMAs, read the gathered tile's row ids, and
// arrive on empty[s] once the last MMA reading slot s (dV / dK) has completed.
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>

#include "attention/cuda/bwd_wgmma_common.cuh"
#include "attention/cuda/mma.cuh"
#include "attention/cuda/params.h"
#include "attention/cuda/wgmma.cuh"

namespace moba::attn::cuda {

template <int D>
struct WgMobaBwdTraits : WgBwdTraits<D> {
  using Base = WgBwdTraits<D>;
  // Row ids (token * Hq + head) of the gathered tiles, [kStages][kBr] int32, after the
  // barriers.
  static constexpr int kOffRowIds = (Base::kOffBar + 8 * Base::kNumBars + 15) / 16 * 16;
  static constexpr int kSmemBytes = 1024 + kOffRowIds + Base::kStages * Base::kBr * 4;
  static_assert(kSmemBytes <= 227 * 1024, "shared memory");
  // 16-byte chunks of one gathered Q (or dO) tile per producer thread: Br rows x D * 2
  // bytes / 16 / 128 threads = 8 at both head dims.
  static constexpr int kChunksPerThread = Base::kBr * Base::kColBlocks * 8 / 128;
  static_assert(kChunksPerThread * 128 == Base::kBr * Base::kColBlocks * 8, "chunk split");
  static constexpr int kProducerBar = 4;  // named barrier of the producer warpgroup (1-3: consumers)
  static constexpr int kFullArrivals = 128;
};

template <int D, bool kBulkDq>
__global__ void __launch_bounds__(384, 1)
    attn_bwd_moba_wgmma_kernel(const __grid_constant__ CUtensorMap tm_q,
                               const __grid_constant__ CUtensorMap tm_k,
                               const __grid_constant__ CUtensorMap tm_v,
                               const __grid_constant__ CUtensorMap tm_do,
                               const __grid_constant__ CUtensorMap tm_lse,
                               const __grid_constant__ CUtensorMap tm_delta,
                               const __grid_constant__ CUtensorMap tm_dq, const AttnParams p,
                               const float* __restrict__ lse_t, const float* __restrict__ delta_t,
                               int n_pad) {
#if MOBA_WGMMA_ENABLED
  using namespace wg;
  using T = WgMobaBwdTraits<D>;
  constexpr int Br = T::kBr, Bc = T::kBc, ST = T::kStages, CB = T::kColBlocks;
  extern __shared__ unsigned char smem_raw[];
  const WgBwdSmem<D> sm(smem_raw);
  constexpr int RS = WgBwdSmem<D>::kRS;
  int* sRowId = reinterpret_cast<int*>(sm.base + T::kOffRowIds);  // [ST][Br]

  // Key tile of this CTA: (kv head, tile n, sequence b), grid order as the dense kernel.
  const int b = blockIdx.z;
  const int kvh = p.heads_fastest ? blockIdx.x : blockIdx.y;
  const int n = p.heads_fastest ? blockIdx.y : blockIdx.x;
  const int seq_start = p.cu_seqlens[b], seq_end = p.cu_seqlens[b + 1];
  const int len = seq_end - seq_start;
  if (n * Bc >= len) return;  // the whole CTA leaves before any barrier
  const int key0 = seq_start + n * Bc;
  // Source (1): causal query tiles, queries key0 .. q_hi - 1 of each head of the group
  // (S >= 128 and a power of two: the 128 keys lie in block blk).
  const int blk = n * Bc / p.S;
  const int q_hi = seq_start + min(len, (blk + 1) * p.S);
  const int tiles = (q_hi - key0 + Br - 1) / Br;  // causal tiles per head (>= 1)
  const int n1 = tiles * p.group;
  // Source (2): the gathered entries of this block, if it is a full block.
  int e_lo = 0, e_hi = 0;
  if (p.kp > 0 && (blk + 1) * p.S <= len) {
    const int bucket = (p.block_offset[b] + blk) * p.Hkv + kvh;
    e_lo = p.bucket_offset[bucket];
    e_hi = p.bucket_offset[bucket + 1];
  }
  const int n_iter = n1 + (e_hi - e_lo + Br - 1) / Br;

  sm.init_barriers(T::kFullArrivals);  // full[s]: every producer thread once per use

  if (threadIdx.x / 128 == 2) {
    // ---------------- producer (all 128 threads) ----------------
    setmaxnreg_dec<T::kProducerRegs>();
    const int pt = threadIdx.x - 256;
    if (pt == 0) sm.load_kv(&tm_q, &tm_k, &tm_v, &tm_do, &tm_lse, &tm_delta, kvh, key0);
    // Gather entry of row pt of the next gathered tile, loaded one tile ahead.
    int ent = 0;
    if (pt < Br && e_lo + pt < e_hi) ent = p.entries[e_lo + pt];
    for (int it = 0; it < n_iter; ++it) {
      const int s = it % ST;
      mbar_wait(&sm.empty[s], ((it / ST) & 1) ^ 1);  // parity 1 passes on a fresh barrier
      if (it < n1) {
        if (pt == 0)
          sm.load_tile(&tm_q, &tm_do, &tm_lse, &tm_delta, s, kvh * p.group + it / tiles,
                       key0 + (it % tiles) * Br);
        else
          mbar_arrive(&sm.full[s]);
      } else {
        const int gbase = e_lo + (it - n1) * Br;  // first entry of the tile
        const int cnt = min(Br, e_hi - gbase);    // real rows (>= 1)
        // The slot was last written by the copy engine or read by wgmma (async proxy); we
        // now write it through the generic proxy.
        fence_proxy_async();
        if (pt < Br) {
          const bool valid = pt < cnt;
          const int row = valid ? ent / p.kp : 0;
          sRowId[s * Br + pt] = row;
          const int tok = row / p.Hq;
          const size_t t = static_cast<size_t>(row - tok * p.Hq) * n_pad + tok;
          detail::cp_async_4(sm.sLse + s * RS + pt, lse_t + t, valid ? 4 : 0);
          detail::cp_async_4(sm.sDelta + s * RS + pt, delta_t + t, valid ? 4 : 0);
          if (gbase + Br + pt < e_hi) ent = p.entries[gbase + Br + pt];
        }
        named_bar_sync(T::kProducerBar, 128);  // the slot's row ids are written
        // Chunk idx = j * 128 + pt: 16-byte chunk c = idx % 8 of the 128-byte row piece
        // u = idx / 8 = (tile row r = u / CB, column block cb = u % CB); a warp copies 4
        // whole 128-byte row pieces per instruction. Destination: the swizzled position of
        // chunk c in row r of column block cb (as a TMA box of Br rows would write it).
#pragma unroll 2
        for (int j = 0; j < T::kChunksPerThread; ++j) {
          const int idx = j * 128 + pt;
          const int c = idx & 7, u = idx >> 3;
          const int r = u / CB, cb = u % CB;
          const size_t src = static_cast<size_t>(sRowId[s * Br + r]) * D + cb * 64 + c * 8;
          const int dst = s * Br * D + cb * Br * 64 + r * 64 + ((c ^ (r & 7)) << 3);
          const int bytes = r < cnt ? 16 : 0;  // padding rows: zeros
          detail::cp_async_16(sm.sQ + dst, p.q + src, bytes);
          detail::cp_async_16(sm.sdO + dst, p.dout + src, bytes);
        }
        detail::cp_async_commit();
        detail::cp_async_wait<0>();
        fence_proxy_async();  // this thread's cp.async writes -> visible to wgmma
        mbar_arrive(&sm.full[s]);
      }
    }
    return;
  }

  // ---------------- consumers ----------------
  setmaxnreg_inc<T::kConsumerRegs>();
  const WgBwdConsumer<D> c(sm, key0);
  const int qd = c.qd;
  const int dq_r0 = c.dq_row_off + 16 * c.wi + c.g;  // this thread's dQ rows of the tile: +0, +8

  float dv[D / 2], dk[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) dv[i] = dk[i] = 0.f;

  if (c.wg_tid == 0) tma_prefetch_desc(&tm_dq);  // this thread issues the reduce-adds
  mbar_wait(sm.full_kv, 0);
  for (int it = 0; it < n_iter; ++it) {
    const int s = it % ST;
    const uint32_t par = (it / ST) & 1;
    const bool causal = it < n1;
    // Causal tile: head h, first query token q0. Gathered tile: cnt real rows.
    const int h = kvh * p.group + it / tiles;
    const int q0 = key0 + (it % tiles) * Br;
    const int cnt = causal ? Br : min(Br, e_hi - (e_lo + (it - n1) * Br));
    const uint32_t qs = c.q_addr + s * T::kQBytes, dos = c.do_addr + s * T::kQBytes;
    const int row_off = causal ? (q0 & 3) : 0;  // causal lse / delta boxes start at q0 & ~3
    const float* lse_s = sm.sLse + s * RS + row_off;
    const float* dl_s = sm.sDelta + s * RS + row_off;
    // Masks by query column col of the tile and key row: causal: key - q0 > col (key
    // after the query) or col >= q_hi - q0 (past the block / sequence end); gathered:
    // col >= cnt (padding rows). kq = key - q0 of this thread's first key row; a value
    // below -Br - 8 disables the causal part for gathered tiles.
    const int col_lim = causal ? q_hi - q0 : cnt;
    const int kq = causal ? c.krow0 - q0 : -(1 << 20);

    // The MMA steps (bwd_wgmma_common.cuh), as the dense kernel.
    float st[Br / 2], dpt[Br / 2];
    mbar_wait(&sm.full[s], par);
    wgbwd_scores<D>(st, dpt, c.k_addr, c.v_addr, qs, dos, c.w);
    const bool need_mask = causal ? (c.kw0 + 63 > q0) || (q0 + Br > q_hi) : cnt < Br;
    wgbwd_probs<Br>(st, lse_s, p.scale_log2, qd, need_mask, [&](int i, int cc) {
      const int col = 8 * i + 2 * qd + (cc & 1);
      return kq + 8 * (cc >> 1) > col || col >= col_lim;
    });
    uint32_t pa[Br / 16][4], dsa[Br / 16][4];
    wgbwd_dsoftmax<Br>(st, dpt, dl_s, qd, pa, dsa);
    wgbwd_dvdk<D>(dv, dk, pa, dsa, qs, dos);

    wgbwd_store_ds<Br, Bc>(sm.base + T::kOffDs + (it & 1) * T::kDsBytes, dsa, c.w, c.wi, c.g, qd);
    fence_proxy_async();      // generic-proxy writes -> visible to wgmma (async proxy)
    named_bar_sync(1, 256);   // both warpgroups' dS^T rows are in buffer it % 2

    float dq[32];
    wgbwd_dq_mma<Bc>(dq, c.ds_addr + (it & 1) * T::kDsBytes + c.dq_a_off, c.k_addr + c.dq_b_off);
    wgmma_wait<1>();          // dV / dK done: slot s (Q, dO, lse, delta) no longer read
    // Row ids of this thread's dQ rows (gathered tiles), read before the slot is released:
    // its two accumulator rows (red.v2), or with kBulkDq the row of the piece it sends.
    int rid0 = 0, rid1 = 0;
    if (!causal) {
      if constexpr (kBulkDq) {
        rid0 = sRowId[s * Br + c.dq_row_off + (c.wg_tid & 63)];
      } else {
        rid0 = sRowId[s * Br + dq_r0];
        rid1 = sRowId[s * Br + dq_r0 + 8];
      }
    }
    mbar_arrive(&sm.empty[s]);
    wgmma_wait<0>();
    fence_regs(dq);

    if (causal) {
      // As the dense kernel; rows at or past q_hi hold exact zeros, a box starting there
      // is not sent.
      wgbwd_dq_reduce_add<D>(c, dq, &tm_dq, h, q0 + c.dq_row_off, q0 + c.dq_row_off < q_hi);
    } else if constexpr (kBulkDq) {
      // The warpgroup's 64 tile rows (dq_row_off..+63) x 64 columns (dq_col0..+63) into its
      // dQ buffer, unswizzled: box b = columns 32b..32b+31, row r at r x 128 bytes. Every
      // thread first waits until the copy engine has read what it sent from the buffer
      // (the previous gathered tile's piece; wg_tid 0 also the causal tiles' boxes).
      bulk_wait_read<0>();
      named_bar_sync(2 + c.w, 128);
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          const int r = 16 * c.wi + c.g + 8 * hh;
          const int off = (i / 4) * T::kDqBoxBytes + r * 128 + (8 * (i % 4) + 2 * qd) * 4;
          *reinterpret_cast<float2*>(c.sDq + off) = make_float2(dq[4 * i + 2 * hh], dq[4 * i + 2 * hh + 1]);
        }
      fence_proxy_async();  // generic-proxy writes -> visible to the bulk copy (async proxy)
      named_bar_sync(2 + c.w, 128);
      // Thread t sends row t % 64, box t / 64, unless the row is padding (>= cnt).
      const int r = c.wg_tid & 63, box = c.wg_tid >> 6;
      if (c.dq_row_off + r < cnt) {
        bulk_reduce_add_f32(p.dq_acc + static_cast<size_t>(rid0) * D + c.dq_col0 + 32 * box,
                            c.sDq + box * T::kDqBoxBytes + r * 128, 128);
        bulk_commit();
      }
    } else {
      // Scattered rows: dq[4i + 2hh + e] = (tile row dq_r0 + 8hh, column dq_col0 + 8i +
      // 2qd + e); padding rows (>= cnt) are skipped.
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        if (dq_r0 + 8 * hh >= cnt) continue;
        float* dst = p.dq_acc + static_cast<size_t>(hh ? rid1 : rid0) * D + c.dq_col0 + 2 * qd;
#pragma unroll
        for (int i = 0; i < 8; ++i) detail::red_add_v2(dst + 8 * i, dq[4 * i + 2 * hh], dq[4 * i + 2 * hh + 1]);
      }
    }
  }
  // The reductions must be complete (their shared-memory source alive) before the CTA
  // exits: wg_tid 0's (the causal tiles'), with kBulkDq every thread's.
  if (kBulkDq || c.wg_tid == 0) bulk_wait<0>();

  wgbwd_epilogue<D>(dv, dk, p, c.krow0, seq_end, kvh, qd);
#else
  // Built for a target without wgmma (not sm_90a): the launcher must not get here.
  __trap();
#endif
}

}  // namespace moba::attn::cuda
