// MoBA forward for Hopper (sm_90a): the two attention kernels of moba_forward on warpgroup
// MMAs fed by TMA, with the structure of the dense wgmma forward (fwd_wgmma.cuh). Same
// contract as FwdMode::kMobaPast / kMobaCurrent of fwd_kernel.cuh. Selected by
// default on sm_90a for S a multiple of 128 (attention_fwd_moba_wgmma.cu; MOBA_MOBA_FWD=mma
// selects the mma.sync kernels). Tested on the H100 (docs/kernel_notes.md, "v11").
//
// One kernel template, two modes (PAST = false / true):
//   current (PAST = false): CTA = 128 consecutive query rows of one (sequence, head), as the
//     dense kernel; keys from the start of the rows' MoBA block (S >= 128, a multiple of
//     128, so a tile of 128 rows lies inside one block and the key tiles line up with the
//     query tiles) up to the last row, causal mask on the last (diagonal) key tile. The
//     epilogue merges the rows' past-block partials (part_o, part_lse, written by the PAST
//     launch before) by log-sum-exp, as kMobaCurrent does, and writes out (bf16) and lse.
//   past (PAST = true): CTA = one gathered tile of the gather index (<= 128 entries of one
//     (full block, kv head) bucket, entry = (token * Hq + head) * kp + slot); keys = the
//     whole block (S keys, contiguous from the tile's first key token), no mask. Q rows are
//     gathered by the producer warpgroup with cp.async (16-byte copies, the 128B swizzle
//     applied by hand), then wait + fence.proxy.async + mbarrier arrive. Writes the
//     normalised fp32 partial output and the lse per entry, as kMobaPast does; rows past
//     the tile's count are zero-filled, computed, never written.
//
// CTA = 3 warpgroups (as fwd_wgmma.cuh): warpgroups 0, 1 consume 64 query rows each
// (S = Q K^T SS wgmma m64n128k16, online softmax on the accumulator layout, O += P V RS
// wgmma with V MN-major), warpgroup 2 produces (one thread issues the K/V TMA copies into a
// ring of kStages slots with full/empty mbarriers; in PAST mode all 128 producer threads
// also copy the gathered Q rows). A consumer warpgroup whose 64 rows are all past the
// tile's row count does no MMA: it still waits for every tile and frees its slot.
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>

#include <cmath>

#include "attention/cuda/mma.cuh"
#include "attention/cuda/params.h"
#include "attention/cuda/wgmma.cuh"

namespace moba::attn::cuda {

template <int D, bool PAST>
struct WgMobaFwdTraits {
  static_assert(D == 64 || D == 128, "wgmma MoBA forward: head dim 64 or 128");
  static constexpr int kBr = 128;                  // query rows (entries) per CTA
  static constexpr int kBc = 128;                  // keys per tile
  static constexpr int kStages = D == 64 ? 3 : 2;  // K/V ring depth
  static constexpr int kThreads = 384;             // 2 consumer + 1 producer warpgroups
  // setmaxnreg targets (see WgFwdTraits): the pool is numRegs x 384 = 168 x 384 = 64512
  // (__launch_bounds__(384, 1)); 128 x P + 256 x C must not exceed it. The PAST producer
  // computes gather addresses (a few more registers than the TMA-only producer).
  static constexpr int kProducerRegs = PAST ? 40 : 24;
  static constexpr int kConsumerRegs = PAST ? 232 : 240;
  static constexpr int kRegPoolNeeded = 128 * kProducerRegs + 256 * kConsumerRegs;
  static_assert(kProducerRegs % 8 == 0 && kConsumerRegs % 8 == 0 && kProducerRegs >= 24 &&
                    kConsumerRegs <= 256,
                "setmaxnreg operand: multiple of 8 in [24, 256]");
  static_assert(kRegPoolNeeded <= 168 * kThreads, "register pool of __launch_bounds__(384, 1)");
  static constexpr int kColBlocks = D / 64;        // 128-byte swizzle column blocks
  static constexpr int kQBytes = kBr * D * 2;
  static constexpr int kTileBytes = kBc * D * 2;   // one K (or V) tile
  static constexpr int kBarBytes = 8 * (1 + 3 * kStages);
  static constexpr int kSmemBytes = 1024 + kQBytes + 2 * kStages * kTileBytes + kBarBytes;
  static_assert(kSmemBytes <= 227 * 1024, "shared memory");
  // PAST Q gather: 16-byte chunks per row, rows per warp instruction.
  static constexpr int kChunksPerRow = D / 8;
  static constexpr int kRowsPerStep = 32 / kChunksPerRow;
};

template <int D, bool PAST>
__global__ void __launch_bounds__(384, 1)
    moba_fwd_wgmma_kernel(const __grid_constant__ CUtensorMap tm_q,
                          const __grid_constant__ CUtensorMap tm_k,
                          const __grid_constant__ CUtensorMap tm_v, const AttnParams p) {
#if MOBA_WGMMA_ENABLED
  using namespace wg;
  using T = WgMobaFwdTraits<D, PAST>;
  constexpr int Br = T::kBr, Bc = T::kBc, ST = T::kStages, CB = T::kColBlocks;
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

  // The CTA's rows and keys. Every early exit is CTA-uniform and before any barrier.
  int kvh, k_begin, n_tiles, count;
  int head = 0, first_tok = 0, seq_start = 0, ent0 = 0;
  if constexpr (PAST) {
    if (static_cast<int>(blockIdx.x) >= *p.num_tiles) return;
    const int4 t = p.tiles[blockIdx.x];  // {first key token, first entry, count, kv head}
    k_begin = t.x;
    ent0 = t.y;
    count = t.z;  // 1..128
    kvh = t.w;
    n_tiles = p.S / Bc;
  } else {
    // As the dense kernel: the last query tiles first; grid (Hq, tiles, B) heads fastest,
    // else (tiles, Hq, B).
    const int b = blockIdx.z;
    seq_start = p.cu_seqlens[b];
    const int len = p.cu_seqlens[b + 1] - seq_start;
    const int m = p.heads_fastest ? gridDim.y - 1 - blockIdx.y : gridDim.x - 1 - blockIdx.x;
    if (m * Br >= len) return;
    head = p.heads_fastest ? blockIdx.x : blockIdx.y;
    kvh = head / p.group;
    first_tok = seq_start + m * Br;
    count = min(Br, len - m * Br);
    // Start of the rows' block (S is a multiple of Br: the tile lies in one block).
    k_begin = seq_start + (m * Br / p.S) * p.S;
    n_tiles = (first_tok + count - k_begin + Bc - 1) / Bc;  // diagonal tile = the last
  }

  const int tid = threadIdx.x;
  const int wgi = tid / 128;  // warpgroup
  if (tid == 0) {
    // PAST: the 128 producer threads each arrive once after their Q copies landed.
    mbar_init(full_q, PAST ? 128 : 1);
    for (int s = 0; s < ST; ++s) {
      mbar_init(&full_k[s], 1);
      mbar_init(&full_v[s], 1);
      mbar_init(&empty[s], 256);  // every consumer thread arrives once per use
    }
    mbar_fence_init();
  }
  __syncthreads();

  if (wgi == 2) {
    // ---------------- producer ----------------
    setmaxnreg_dec<T::kProducerRegs>();
    const int pt = tid - 256;
    // K and V of key tile j into ring slot j % ST, after both consumers freed the slot
    // (parity 1 on a fresh barrier passes at once: the first ST tiles do not wait).
    auto issue_kv = [&](int j) {
      const int s = j % ST;
      const int kt = k_begin + j * Bc;
      mbar_wait(&empty[s], ((j / ST) & 1) ^ 1);
      __nv_bfloat16* k_dst = sK + s * Bc * D;
      __nv_bfloat16* v_dst = sV + s * Bc * D;
      mbar_arrive_expect_tx(&full_k[s], T::kTileBytes);
#pragma unroll
      for (int cb = 0; cb < CB; ++cb) tma_load_3d(k_dst + cb * Bc * 64, &tm_k, cb * 64, kvh, kt, &full_k[s]);
      mbar_arrive_expect_tx(&full_v[s], T::kTileBytes);
#pragma unroll
      for (int cb = 0; cb < CB; ++cb) tma_load_3d(v_dst + cb * Bc * 64, &tm_v, cb * 64, kvh, kt, &full_v[s]);
    };
    const int pre = min(ST, n_tiles);
    if constexpr (PAST) {
      if (pt == 0) {
        tma_prefetch_desc(&tm_k);
        tma_prefetch_desc(&tm_v);
        for (int j = 0; j < pre; ++j) issue_kv(j);  // no waiting: fresh slots
      }
      // Gathered Q rows: warp w copies rows 32w..32w+31. Lane l looks up row 32w + l's
      // entry; its q row is entry / kp = token * Hq + head (-1: past the tile's count,
      // zero-filled). Per step the warp copies kRowsPerStep whole rows (128 or 256
      // contiguous bytes each), chunk c of row r to the 128B-swizzled position: column
      // block c / 8, row r (128 bytes), 16-byte chunk (c % 8) ^ (r % 8) (wgmma.cuh).
      const int w = pt / 32, lane = pt % 32;
      const int my_row = 32 * w + lane;
      const int my_q = my_row < count ? p.entries[ent0 + my_row] / p.kp : -1;
      const uint32_t q_base = smem_addr(sQ);
      constexpr int CPR = T::kChunksPerRow, RPS = T::kRowsPerStep;
#pragma unroll
      for (int k = 0; k < 32 / RPS; ++k) {
        const int rl = k * RPS + lane / CPR;
        const int c = lane % CPR;
        const int qrow = __shfl_sync(0xffffffffu, my_q, rl);
        const int r = 32 * w + rl;
        const uint32_t dst = q_base + (c / 8) * (Br * 128) + r * 128 + (((c % 8) ^ (r % 8)) * 16);
        const __nv_bfloat16* src = qrow >= 0 ? p.q + static_cast<size_t>(qrow) * D + c * 8 : p.q;
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
                     "r"(qrow >= 0 ? 16 : 0)
                     : "memory");
      }
      detail::cp_async_commit();
      detail::cp_async_wait<0>();  // this thread's copies have landed (generic proxy)
      fence_proxy_async();         // ... and are ordered before async-proxy (wgmma) reads
      mbar_arrive(full_q);         // release; the consumers acquire with try_wait
      if (pt == 0)
        for (int j = pre; j < n_tiles; ++j) issue_kv(j);
    } else {
      if (pt == 0) {
        tma_prefetch_desc(&tm_q);
        tma_prefetch_desc(&tm_k);
        tma_prefetch_desc(&tm_v);
        mbar_arrive_expect_tx(full_q, T::kQBytes);
#pragma unroll
        for (int cb = 0; cb < CB; ++cb) tma_load_3d(sQ + cb * Br * 64, &tm_q, cb * 64, head, first_tok, full_q);
        for (int j = 0; j < n_tiles; ++j) issue_kv(j);
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

  if (wg_row0 >= count) {
    // No row of this warpgroup exists: no MMA, but every tile's slot must be freed by
    // both warpgroups. Waiting for the tile first keeps each arrival in its own phase.
    for (int j = 0; j < n_tiles; ++j) {
      const int st = j % ST;
      const uint32_t par = (j / ST) & 1;
      mbar_wait(&full_k[st], par);
      mbar_wait(&full_v[st], par);
      mbar_arrive(&empty[st]);
    }
    return;
  }

  const int tok[2] = {first_tok + row0, first_tok + row0 + 8};  // current mode only
  const uint32_t q_addr = smem_addr(sQ) + wg_row0 * 128;
  const uint32_t k_addr = smem_addr(sK);
  const uint32_t v_addr = smem_addr(sV);

  float o[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};
  float s[Bc / 2];

  mbar_wait(full_q, 0);
  for (int j = 0; j < n_tiles; ++j) {
    const int st = j % ST;
    const uint32_t par = (j / ST) & 1;
    const int kt = k_begin + j * Bc;

    // S = Q K^T (K-major A and B; k-step kk = column block kk/4, +32 bytes per step).
    mbar_wait(&full_k[st], par);
    fence_regs(s);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint32_t off = (kk % 4) * 32;
      const uint64_t da = desc_kmajor_sw128(q_addr + (kk / 4) * (Br * 128) + off);
      const uint64_t db = desc_kmajor_sw128(k_addr + st * T::kTileBytes + (kk / 4) * (Bc * 128) + off);
      wgmma_ss<Bc>(s, da, db, kk > 0);
    }
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(s);

    // Causal mask (current mode): only the diagonal tile reaches past this warpgroup's
    // first row. Past blocks lie entirely before their queries: no mask.
    if (!PAST && kt + Bc - 1 > first_tok + wg_row0) {
#pragma unroll
      for (int i = 0; i < Bc / 8; ++i)
#pragma unroll
        for (int c = 0; c < 4; ++c)
          if (kt + 8 * i + 2 * qd + (c & 1) > tok[c / 2]) s[4 * i + c] = -INFINITY;
    }

    // Online softmax (raw scores; scale*log2e folded into the exponent's FMA).
    fence_regs(o);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float mx = -INFINITY;
#pragma unroll
      for (int i = 0; i < Bc / 8; ++i) mx = fmaxf(mx, fmaxf(s[4 * i + 2 * h], s[4 * i + 2 * h + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(row_max[h], mx);
      const float m_use = (m_new == -INFINITY ? 0.f : m_new) * p.scale_log2;
      const float alpha = exp2f(fmaf(row_max[h], p.scale_log2, -m_use));
      row_max[h] = m_new;
      row_sum[h] *= alpha;
#pragma unroll
      for (int i = 0; i < D / 8; ++i) {
        o[4 * i + 2 * h] *= alpha;
        o[4 * i + 2 * h + 1] *= alpha;
      }
#pragma unroll
      for (int i = 0; i < Bc / 8; ++i) {
        s[4 * i + 2 * h] = exp2f(fmaf(s[4 * i + 2 * h], p.scale_log2, -m_use));
        s[4 * i + 2 * h + 1] = exp2f(fmaf(s[4 * i + 2 * h + 1], p.scale_log2, -m_use));
        row_sum[h] += s[4 * i + 2 * h] + s[4 * i + 2 * h + 1];
      }
    }
    // P (bf16) in the A-fragment layout: k-step kk = accumulator columns 16kk..16kk+15.
    uint32_t pa[Bc / 16][4];
#pragma unroll
    for (int kk = 0; kk < Bc / 16; ++kk) {
      pa[kk][0] = detail::pack_bf16(s[8 * kk + 0], s[8 * kk + 1]);
      pa[kk][1] = detail::pack_bf16(s[8 * kk + 2], s[8 * kk + 3]);
      pa[kk][2] = detail::pack_bf16(s[8 * kk + 4], s[8 * kk + 5]);
      pa[kk][3] = detail::pack_bf16(s[8 * kk + 6], s[8 * kk + 7]);
    }

    // O += P V (V MN-major: 16 keys per k-step = 2 swizzle atoms = 2048 bytes).
    mbar_wait(&full_v[st], par);
    fence_regs(o);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < Bc / 16; ++kk) {
      const uint64_t db = desc_mnmajor_sw128(v_addr + st * T::kTileBytes + kk * 2048, Bc * 128);
      wgmma_rs<D>(o, pa[kk], db, 1);
    }
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(o);
    mbar_arrive(&empty[st]);  // this thread is done with slot st (K and V)
  }

  // Epilogue. lse in natural log: (max * scale*log2e + log2 l) * ln 2, as fwd_kernel.cuh.
  constexpr float kLn2 = 0.6931471805599453f;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float l = row_sum[h] + __shfl_xor_sync(0xffffffffu, row_sum[h], 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const int r = row0 + 8 * h;  // row of the tile
    if (r >= count) continue;
    const float inv = l > 0.f ? 1.f / l : 0.f;
    const float lse = l > 0.f ? fmaf(row_max[h], p.scale_log2, log2f(l)) * kLn2 : -INFINITY;
    if constexpr (PAST) {
      // Normalised fp32 partial and lse of entry e (kMobaPast's epilogue).
      const int e = p.entries[ent0 + r];
      float* dst = p.part_o + static_cast<size_t>(e) * D;
#pragma unroll
      for (int i = 0; i < D / 8; ++i)
        *reinterpret_cast<float2*>(dst + 8 * i + 2 * qd) =
            make_float2(o[4 * i + 2 * h] * inv, o[4 * i + 2 * h + 1] * inv);
      if (qd == 0) p.part_lse[e] = lse;
    } else {
      // kMobaCurrent's merge: out = sum_i exp(lse_i - lse) out_i over the current part and
      // each valid past slot (slot sl holds a past block iff sel[sl] >= 0 and sel[sl] < c,
      // c = the row's current block; the selection is ascending with c last).
      const int row = tok[h] * p.Hq + head;
#pragma unroll
      for (int i = 0; i < D / 8; ++i) {
        o[4 * i + 2 * h] *= inv;
        o[4 * i + 2 * h + 1] *= inv;
      }
      const int kp = p.kp;
      const int c = (tok[h] - seq_start) / p.S;
      const int32_t* sel = p.sel + static_cast<size_t>(row) * p.K;
      const float* plse = p.part_lse + static_cast<size_t>(row) * kp;
      float mx = lse;
      for (int sl = 0; sl < kp; ++sl)
        if (sel[sl] >= 0 && sel[sl] < c) mx = fmaxf(mx, __ldg(plse + sl));
      float sum = expf(lse - mx);
      for (int sl = 0; sl < kp; ++sl)
        if (sel[sl] >= 0 && sel[sl] < c) sum += expf(__ldg(plse + sl) - mx);
      const float lse_tot = mx + logf(sum);
      const float w_cur = expf(lse - lse_tot);
#pragma unroll
      for (int i = 0; i < D / 8; ++i) {
        o[4 * i + 2 * h] *= w_cur;
        o[4 * i + 2 * h + 1] *= w_cur;
      }
      for (int sl = 0; sl < kp; ++sl) {
        if (!(sel[sl] >= 0 && sel[sl] < c)) continue;
        const float w = expf(__ldg(plse + sl) - lse_tot);
        const float2* po = reinterpret_cast<const float2*>(
            p.part_o + (static_cast<size_t>(row) * kp + sl) * D + 2 * qd);
        float2 v[D / 8];
#pragma unroll
        for (int i = 0; i < D / 8; ++i) v[i] = __ldg(po + i * 4);
#pragma unroll
        for (int i = 0; i < D / 8; ++i) {
          o[4 * i + 2 * h] += w * v[i].x;
          o[4 * i + 2 * h + 1] += w * v[i].y;
        }
      }
      __nv_bfloat16* dst = p.o + static_cast<size_t>(row) * D;
#pragma unroll
      for (int i = 0; i < D / 8; ++i)
        *reinterpret_cast<uint32_t*>(dst + 8 * i + 2 * qd) =
            detail::pack_bf16(o[4 * i + 2 * h], o[4 * i + 2 * h + 1]);
      if (qd == 0) p.lse[row] = lse_tot;
    }
  }
#else
  // Built for a target without wgmma (not sm_90a): the launcher must not get here.
  __trap();
#endif
}

}  // namespace moba::attn::cuda
