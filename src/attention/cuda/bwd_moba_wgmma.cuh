// MoBA backward for Hopper (sm_90a): the CTA of the dense warpgroup backward
// (bwd_wgmma.cuh: 3 warpgroups, one tile of Bc = 128 keys of one (sequence, kv head), two
// consumer warpgroups of 64 keys, one producer warpgroup, setmaxnreg 24 / 240, the same
// MMAs from bwd_wgmma_common.cuh), walking MoBA's two sources of query tiles. Same
// contract and results as the MoBA path of bwd_kernel.cuh (dq, dk, dv in bf16, dQ through
// the fp32 accumulator). COMPILE-ONLY so far (docs/kernel_notes.md, "wgmma MoBA backward").
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
//       kernel). Every key of the block precedes every gathered query: no causal mask.
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

template <int D>
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
  const uint32_t raw_addr = smem_addr(smem_raw);
  unsigned char* smem = smem_raw + ((1024 - (raw_addr & 1023)) & 1023);
  __nv_bfloat16* sK = reinterpret_cast<__nv_bfloat16*>(smem + T::kOffK);    // [CB][Bc][64]
  __nv_bfloat16* sV = reinterpret_cast<__nv_bfloat16*>(smem + T::kOffV);    // [CB][Bc][64]
  __nv_bfloat16* sQ = reinterpret_cast<__nv_bfloat16*>(smem + T::kOffQ);    // [ST][CB][Br][64]
  __nv_bfloat16* sdO = reinterpret_cast<__nv_bfloat16*>(smem + T::kOffDo);  // [ST][CB][Br][64]
  float* sLse = reinterpret_cast<float*>(smem + T::kOffLse);        // [ST][kRowBytes / 4]
  float* sDelta = reinterpret_cast<float*>(smem + T::kOffDelta);    // [ST][kRowBytes / 4]
  int* sRowId = reinterpret_cast<int*>(smem + T::kOffRowIds);       // [ST][Br]
  constexpr int RS = T::kRowBytes / 4;  // floats between ring slots of lse / delta
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + T::kOffBar);
  uint64_t* full_kv = bars;
  uint64_t* full = bars + 1;        // [ST]
  uint64_t* empty = bars + 1 + ST;  // [ST]

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

  const int tid = threadIdx.x;
  const int wgi = tid / 128;
  if (tid == 0) {
    mbar_init(full_kv, 1);
    for (int s = 0; s < ST; ++s) {
      mbar_init(&full[s], T::kFullArrivals);  // every producer thread arrives once per use
      mbar_init(&empty[s], 256);              // every consumer thread arrives once per use
    }
    mbar_fence_init();
  }
  __syncthreads();

  if (wgi == 2) {
    // ---------------- producer (all 128 threads) ----------------
    setmaxnreg_dec<T::kProducerRegs>();
    const int pt = tid - 256;
    if (pt == 0) {
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
    }
    // Gather entry of row pt of the next gathered tile, loaded one tile ahead.
    int ent = 0;
    if (pt < Br && e_lo + pt < e_hi) ent = p.entries[e_lo + pt];
    for (int it = 0; it < n_iter; ++it) {
      const int s = it % ST;
      mbar_wait(&empty[s], ((it / ST) & 1) ^ 1);  // parity 1 passes on a fresh barrier
      if (it < n1) {
        if (pt == 0) {
          const int h = kvh * p.group + it / tiles;
          const int q0 = key0 + (it % tiles) * Br;
          mbar_arrive_expect_tx(&full[s], T::kStageTx);
#pragma unroll
          for (int cb = 0; cb < CB; ++cb) {
            tma_load_3d(sQ + s * Br * D + cb * Br * 64, &tm_q, cb * 64, h, q0, &full[s]);
            tma_load_3d(sdO + s * Br * D + cb * Br * 64, &tm_do, cb * 64, h, q0, &full[s]);
          }
          tma_load_2d(sLse + s * RS, &tm_lse, q0 & ~3, h, &full[s]);  // 16-byte aligned start
          tma_load_2d(sDelta + s * RS, &tm_delta, q0 & ~3, h, &full[s]);
        } else {
          mbar_arrive(&full[s]);
        }
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
          detail::cp_async_4(sLse + s * RS + pt, lse_t + t, valid ? 4 : 0);
          detail::cp_async_4(sDelta + s * RS + pt, delta_t + t, valid ? 4 : 0);
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
          detail::cp_async_16(sQ + dst, p.q + src, bytes);
          detail::cp_async_16(sdO + dst, p.dout + src, bytes);
        }
        detail::cp_async_commit();
        detail::cp_async_wait<0>();
        fence_proxy_async();  // this thread's cp.async writes -> visible to wgmma
        mbar_arrive(&full[s]);
      }
    }
    return;
  }

  // ---------------- consumers ----------------
  setmaxnreg_inc<T::kConsumerRegs>();
  // Warp-uniform through a shuffle (see bwd_wgmma.cuh).
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
  // dQ split as the dense kernel: D = 128: columns 64w..; D = 64: query rows 64w.. .
  constexpr bool kSplitCols = D == 128;
  const uint32_t dq_a_off = kSplitCols ? 0u : static_cast<uint32_t>(w * Bc * 128);
  const uint32_t dq_b_off = kSplitCols ? static_cast<uint32_t>(w * Bc * 128) : 0u;
  const int dq_col0 = kSplitCols ? 64 * w : 0;
  const int dq_row_off = kSplitCols ? 0 : 64 * w;
  const int dq_r0 = dq_row_off + 16 * wi + g;  // this thread's dQ rows of the tile: +0, +8

  float dv[D / 2], dk[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) dv[i] = dk[i] = 0.f;

  if (wg_tid == 0) tma_prefetch_desc(&tm_dq);  // this thread issues the reduce-adds
  mbar_wait(full_kv, 0);
  for (int it = 0; it < n_iter; ++it) {
    const int s = it % ST;
    const uint32_t par = (it / ST) & 1;
    const bool causal = it < n1;
    // Causal tile: head h, first query token q0. Gathered tile: cnt real rows.
    const int h = kvh * p.group + it / tiles;
    const int q0 = key0 + (it % tiles) * Br;
    const int cnt = causal ? Br : min(Br, e_hi - (e_lo + (it - n1) * Br));
    const uint32_t qs = q_addr + s * T::kQBytes, dos = do_addr + s * T::kQBytes;
    const int row_off = causal ? (q0 & 3) : 0;  // causal lse / delta boxes start at q0 & ~3
    const float* lse_s = sLse + s * RS + row_off;
    const float* dl_s = sDelta + s * RS + row_off;
    // Masks by query column col of the tile and key row: causal: key - q0 > col (key
    // after the query) or col >= q_hi - q0 (past the block / sequence end); gathered:
    // col >= cnt (padding rows). kq = key - q0 of this thread's first key row; a value
    // below -Br - 8 disables the causal part for gathered tiles.
    const int col_lim = causal ? q_hi - q0 : cnt;
    const int kq = causal ? krow0 - q0 : -(1 << 20);
    const bool need_mask = causal ? (kw0 + 63 > q0) || (q0 + Br > q_hi) : cnt < Br;

    float st[Br / 2], dpt[Br / 2];
    mbar_wait(&full[s], par);
    wgbwd_scores<D>(st, dpt, k_addr, v_addr, qs, dos, w);
    wgbwd_probs<Br>(st, lse_s, p.scale_log2, qd, need_mask, [&](int i, int c) {
      const int col = 8 * i + 2 * qd + (c & 1);
      return kq + 8 * (c >> 1) > col || col >= col_lim;
    });
    uint32_t pa[Br / 16][4], dsa[Br / 16][4];
    wgbwd_dsoftmax<Br>(st, dpt, dl_s, qd, pa, dsa);
    wgbwd_dvdk<D>(dv, dk, pa, dsa, qs, dos);

    wgbwd_store_ds<Br, Bc>(smem + T::kOffDs + (it & 1) * T::kDsBytes, dsa, w, wi, g, qd);
    fence_proxy_async();      // generic-proxy writes -> visible to wgmma (async proxy)
    named_bar_sync(1, 256);   // both warpgroups' dS^T rows are in buffer it % 2

    float dq[32];
    wgbwd_dq_mma<Bc>(dq, ds_addr + (it & 1) * T::kDsBytes + dq_a_off, k_addr + dq_b_off);
    wgmma_wait<1>();          // dV / dK done: slot s (Q, dO, lse, delta) no longer read
    // Row ids of this thread's dQ rows (gathered tiles), read before the slot is released.
    int rid0 = 0, rid1 = 0;
    if (!causal) {
      rid0 = sRowId[s * Br + dq_r0];
      rid1 = sRowId[s * Br + dq_r0 + 8];
    }
    mbar_arrive(&empty[s]);
    wgmma_wait<0>();
    fence_regs(dq);

    if (causal) {
      // As the dense kernel: swizzled boxes, one thread reduce-adds them into dq_acc.
      // Rows at or past q_hi hold exact zeros; a box starting there is not sent.
      if (wg_tid == 0) bulk_wait_read<0>();  // the previous boxes have been read
      named_bar_sync(2 + w, 128);
      wgbwd_stage_dq<T::kDqBoxBytes>(sDq, dq, wi, g, qd);
      fence_proxy_async();
      named_bar_sync(2 + w, 128);
      if (wg_tid == 0) {
        if (q0 + dq_row_off < q_hi) {
#pragma unroll
          for (int box = 0; box < 2; ++box)
            tma_reduce_add_3d(&tm_dq, dq_col0 + 32 * box, h, q0 + dq_row_off,
                              sDq + box * T::kDqBoxBytes);
        }
        bulk_commit();
      }
    } else {
      // Scattered rows: dq[4i + 2hh + e] = (tile row dq_r0 + 8hh, column dq_col0 + 8i +
      // 2qd + e); padding rows (>= cnt) are skipped.
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        if (dq_r0 + 8 * hh >= cnt) continue;
        float* dst = p.dq_acc + static_cast<size_t>(hh ? rid1 : rid0) * D + dq_col0 + 2 * qd;
#pragma unroll
        for (int i = 0; i < 8; ++i) detail::red_add_v2(dst + 8 * i, dq[4 * i + 2 * hh], dq[4 * i + 2 * hh + 1]);
      }
    }
  }
  // The reductions must be complete (their shared-memory source alive) before the CTA
  // exits.
  if (wg_tid == 0) bulk_wait<0>();

  wgbwd_epilogue<D>(dv, dk, p, krow0, seq_end, kvh, qd);
#else
  // Built for a target without wgmma (not sm_90a): the launcher must not get here.
  __trap();
#endif
}

}  // namespace moba::attn::cuda
