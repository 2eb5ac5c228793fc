// Flash-attention backward, key-tile major (the FlashAttention-2 scheme, written here from
// the maths): one CTA owns a tile of Bc = 16*NW keys of one kv head and keeps their dK and
// dV in registers while it walks every query tile that attends to them; dQ is accumulated
// with fp32 atomics (red.v2) into a buffer converted to bf16 afterwards.
//
// Per query tile (BR = 64 rows, each row a (token, query head) pair), three phases with
// three warp layouts, each warp owning a 32 x 32 (or 32 x 64) block of its product so that
// every fragment loaded from shared memory feeds two or more MMAs (mma.sync attention is
// bound by shared-memory traffic):
//   1. S^T = K Q^T, dP^T = V dO^T       warps (Bc/32 key groups) x (2 query halves);
//      P^T = exp2(S^T*scale*log2e - lse*log2e), dS^T = P^T o (dP^T - delta), both stored
//      to shared memory as bf16.
//   2. dV += P^T dO, dK += dS^T Q        warps (Bc/32 key groups) x (2 halves of D).
//   3. dQ += dS K                         warps (2 query halves) x (NW/2 slices of D).
//
// Query tiles come from two sources: (1) causal: the queries from the key tile on, up to
// the end of the sequence (dense) or of the current block (MoBA), for each query head of
// the kv group; (2) MoBA only: the gathered entries that selected this key tile's block.
#pragma once

#include <cuda_bf16.h>

#include <cmath>

#include "attention/cuda/fwd_kernel.cuh"
#include "attention/cuda/mma.cuh"
#include "attention/cuda/params.h"

namespace moba::attn::cuda {

template <int D, int NW, int BR>
struct BwdTraits {
  static_assert(BR == 64 && (NW == 4 || NW == 8), "layouts below assume 64 rows, 4 or 8 warps");
  static constexpr int kThreads = NW * 32;
  static constexpr int kBc = 16 * NW;  // keys per CTA
  static constexpr int kLd = D + 8;    // padded rows, see FwdTraits
  static constexpr int kLdS = BR + 8;  // P^T and dS^T rows
  // Query tiles are loaded two ahead (three buffers): gathered rows are random rows of
  // q and dout, and one tile of compute does not always cover their latency.
  static constexpr int kStages = 3;
  static constexpr int kEntRing = 4;  // gather entries are loaded four tiles ahead
  static constexpr int kSmemBytes =
      (2 * kBc * kLd + 2 * kStages * BR * kLd + 2 * kBc * kLdS) * 2 + kStages * BR * 4 * 4 +
      kEntRing * BR * 4;
};

template <int D, int NW, int BR, bool MOBA>
__global__ void __launch_bounds__(NW * 32) attn_bwd_kernel(const AttnParams p) {
  using namespace detail;
  using T = BwdTraits<D, NW, BR>;
  constexpr int Bc = T::kBc, LD = T::kLd, LDS = T::kLdS, THREADS = T::kThreads;
  constexpr int NS = T::kStages, NE = T::kEntRing;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __nv_bfloat16* sK = reinterpret_cast<__nv_bfloat16*>(smem_raw);  // [Bc][LD]
  __nv_bfloat16* sV = sK + Bc * LD;                                // [Bc][LD]
  __nv_bfloat16* sQ = sV + Bc * LD;                                // [NS][BR][LD]
  __nv_bfloat16* sdO = sQ + NS * BR * LD;                          // [NS][BR][LD]
  __nv_bfloat16* sP = sdO + NS * BR * LD;                          // [Bc][LDS] P^T
  __nv_bfloat16* sdS = sP + Bc * LDS;                              // [Bc][LDS] dS^T
  int* sTok = reinterpret_cast<int*>(sdS + Bc * LDS);              // [NS][BR] token, -1 none
  int* sRow = sTok + NS * BR;                                      // [NS][BR] tok * Hq + h
  float* sLse = reinterpret_cast<float*>(sRow + NS * BR);          // [NS][BR] lse (natural)
  float* sDelta = sLse + NS * BR;                                  // [NS][BR]
  int* sEnt = reinterpret_cast<int*>(sDelta + NS * BR);            // [NE][BR] gather entries

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, qd = lane % 4;
  // Grid (Hkv, key tiles, B) with heads fastest: the first key tiles (most queries) of
  // every head start first, so that no long CTA ends the launch (short sequences); or
  // (key tiles, Hkv, B): CTAs running together share one head's q/dout in L2 (long ones).
  const int b = blockIdx.z;
  const int kvh = p.heads_fastest ? blockIdx.x : blockIdx.y;
  const int n = p.heads_fastest ? blockIdx.y : blockIdx.x;
  const int seq_start = p.cu_seqlens[b], len = p.cu_seqlens[b + 1] - seq_start;
  if (n * Bc >= len) return;
  const int key0 = seq_start + n * Bc;
  const int kcount = min(Bc, len - n * Bc);

  // Source (1): causal query tiles of each head of the group.
  const int blk = MOBA ? n * Bc / p.S : 0;
  const int q_lo = key0;
  const int q_hi = MOBA ? seq_start + min(len, (blk + 1) * p.S) : seq_start + len;
  const int tiles_per_head = (q_hi - q_lo + BR - 1) / BR;
  const int n1 = tiles_per_head * p.group;
  // Source (2): gathered entries of this block, if it is a full block.
  int e_lo = 0, e_hi = 0;
  if (MOBA && p.kp > 0 && (blk + 1) * p.S <= len) {
    const int bucket = (p.block_offset[b] + blk) * p.Hkv + kvh;
    e_lo = p.bucket_offset[bucket];
    e_hi = p.bucket_offset[bucket + 1];
  }
  const int n_tiles = n1 + (e_hi - e_lo + BR - 1) / BR;

  // Every global read of a query tile is a cp.async issued two tiles ahead (entries of
  // gathered tiles four ahead): no warp waits on a plain load at the top of an iteration.
  auto prefetch_entries = [&](int i) {
    if (i < n1 || i >= n_tiles) return;
    for (int r = tid; r < BR; r += THREADS) {
      const int idx = e_lo + (i - n1) * BR + r;
      if (idx < e_hi) cp_async_4(sEnt + (i % NE) * BR + r, p.entries + idx, 4);
    }
  };
  // (token, row id) of row r of query tile i; token -1 when the row is past the tile's end.
  auto row_of = [&](int i, int r, int& tok, int& row) {
    if (i < n1) {
      const int h = kvh * p.group + i / tiles_per_head;
      const int pos = q_lo + (i % tiles_per_head) * BR + r;
      tok = pos < q_hi ? pos : -1;
      row = pos * p.Hq + h;
    } else {
      const int idx = e_lo + (i - n1) * BR + r;
      const int e = idx < e_hi ? sEnt[(i % NE) * BR + r] : -1;
      row = e < 0 ? 0 : e / p.kp;
      tok = e < 0 ? -1 : row / p.Hq;
    }
  };
  auto load_tile = [&](int buf, int i) {
    for (int r = tid; r < BR; r += THREADS) {
      int tok, row;
      row_of(i, r, tok, row);
      sTok[buf * BR + r] = tok;
      sRow[buf * BR + r] = row;
      // Rows past the end read 0; their probabilities are masked to 0 (token -1).
      cp_async_4(sLse + buf * BR + r, p.lse + row, tok >= 0 ? 4 : 0);
      cp_async_4(sDelta + buf * BR + r, p.delta + row, tok >= 0 ? 4 : 0);
    }
    auto src = [&](const __nv_bfloat16* base) {
      return [=](int r) -> const __nv_bfloat16* {
        int tok, row;
        row_of(i, r, tok, row);
        return tok >= 0 ? base + static_cast<size_t>(row) * D : nullptr;
      };
    };
    load_rows<D, LD, THREADS>(sQ + buf * BR * LD, BR, p.q, src(p.q));
    load_rows<D, LD, THREADS>(sdO + buf * BR * LD, BR, p.dout, src(p.dout));
  };

  auto kv_src = [&](const __nv_bfloat16* base) {
    return [=](int r) -> const __nv_bfloat16* {
      return r < kcount ? base + (static_cast<size_t>(key0 + r) * p.Hkv + kvh) * D : nullptr;
    };
  };
  // Prologue: entries of tiles 0..3; then K, V and tile 0 (one group), tile 1 (another).
  for (int t = 0; t < NE; ++t) prefetch_entries(t);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  load_rows<D, LD, THREADS>(sK, Bc, p.k, kv_src(p.k));
  load_rows<D, LD, THREADS>(sV, Bc, p.v, kv_src(p.v));
  if (n_tiles > 0) load_tile(0, 0);
  cp_async_commit();
  if (n_tiles > 1) load_tile(1, 1);
  cp_async_commit();
  cp_async_wait<1>();
  __syncthreads();

  // Warp layouts (see the top of the file).
  constexpr int KG = NW / 2;        // key groups of 32
  constexpr int DW2 = D / 2;        // phase 2: columns of dK/dV per warp
  constexpr int DW3 = D / (NW / 2); // phase 3: columns of dQ per warp
  static_assert(DW3 % 16 == 0, "dQ column slice must be a multiple of 16");
  const int wk = warp % KG, wh = warp / KG;  // phases 1-2: key group, query / D half
  const int wq3 = warp % 2, wd3 = warp / 2;  // phase 3: query half, D slice

  float dk[2][DW2 / 8][4], dv[2][DW2 / 8][4];  // 32 keys x D/2 of this warp
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int i = 0; i < DW2 / 8; ++i)
#pragma unroll
      for (int c = 0; c < 4; ++c) dk[mt][i][c] = dv[mt][i][c] = 0.f;
  constexpr float kLog2e = 1.4426950408889634f;

  for (int i = 0; i < n_tiles; ++i) {
    const int buf = i % NS;
    if (i + 2 < n_tiles) {  // tile i + 2 and the entries of tile i + 4, while tile i computes
      prefetch_entries(i + 4);
      load_tile((i + 2) % NS, i + 2);
    }
    cp_async_commit();  // possibly empty: one group per iteration keeps wait<1> exact
    const __nv_bfloat16* q_s = sQ + buf * BR * LD;
    const __nv_bfloat16* do_s = sdO + buf * BR * LD;
    const int* tok_s = sTok + buf * BR;

    // Phase 1: S^T and dP^T for keys wk*32.. and queries wh*32.. .
    {
      float st[2][4][4], dpt[2][4][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int c = 0; c < 4; ++c) st[mt][j][c] = dpt[mt][j][c] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t ak[2][4], av[2][4];
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          const int off = (wk * 32 + mt * 16 + lane % 16) * LD + kk * 16 + (lane / 16) * 8;
          ldmatrix_x4(ak[mt], sK + off);
          ldmatrix_x4(av[mt], sV + off);
        }
#pragma unroll
        for (int np = 0; np < 2; ++np) {
          const int off = (wh * 32 + np * 16 + lane % 8 + (lane / 16) * 8) * LD + kk * 16 +
                          ((lane / 8) % 2) * 8;
          uint32_t bq[4], bo[4];
          ldmatrix_x4(bq, q_s + off);
          ldmatrix_x4(bo, do_s + off);
#pragma unroll
          for (int mt = 0; mt < 2; ++mt) {
            mma_bf16(st[mt][2 * np], ak[mt], bq[0], bq[1]);
            mma_bf16(st[mt][2 * np + 1], ak[mt], bq[2], bq[3]);
            mma_bf16(dpt[mt][2 * np], av[mt], bo[0], bo[1]);
            mma_bf16(dpt[mt][2 * np + 1], av[mt], bo[2], bo[3]);
          }
        }
      }
      // A key attends a row only if key <= row token (causal; also false for rows past the
      // end, token -1). Gathered rows come after their whole block: a no-op there.
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        const int col = wh * 32 + nt * 8 + 2 * qd;
        const float2 lse2 = *reinterpret_cast<const float2*>(sLse + buf * BR + col);
        const float2 dl2 = *reinterpret_cast<const float2*>(sDelta + buf * BR + col);
        const int t0 = tok_s[col], t1 = tok_s[col + 1];
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
          for (int c = 0; c < 4; ++c) {
            const int ktok = key0 + wk * 32 + mt * 16 + g + 8 * (c / 2);
            const float lse = (c & 1) ? lse2.y : lse2.x, dl = (c & 1) ? dl2.y : dl2.x;
            float pv = exp2f(st[mt][nt][c] * p.scale_log2 - lse * kLog2e);
            if (ktok > ((c & 1) ? t1 : t0)) pv = 0.f;
            st[mt][nt][c] = pv;
            dpt[mt][nt][c] = pv * (dpt[mt][nt][c] - dl);
          }
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int off = (wk * 32 + mt * 16 + g + 8 * h) * LDS + col;
            *reinterpret_cast<uint32_t*>(sP + off) = pack_bf16(st[mt][nt][2 * h], st[mt][nt][2 * h + 1]);
            *reinterpret_cast<uint32_t*>(sdS + off) = pack_bf16(dpt[mt][nt][2 * h], dpt[mt][nt][2 * h + 1]);
          }
      }
    }
    __syncthreads();

    // Phase 2: dV += P^T dO, dK += dS^T Q for keys wk*32.. and columns wh*DW2.. .
#pragma unroll
    for (int kk = 0; kk < BR / 16; ++kk) {
      uint32_t ap[2][4], ads[2][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        const int off = (wk * 32 + mt * 16 + lane % 16) * LDS + kk * 16 + (lane / 16) * 8;
        ldmatrix_x4(ap[mt], sP + off);
        ldmatrix_x4(ads[mt], sdS + off);
      }
#pragma unroll
      for (int dp = 0; dp < DW2 / 16; ++dp) {
        const int off = (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * LD + wh * DW2 + dp * 16 +
                        (lane / 16) * 8;
        uint32_t bo[4], bq[4];
        ldmatrix_x4_trans(bo, do_s + off);
        ldmatrix_x4_trans(bq, q_s + off);
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          mma_bf16(dv[mt][2 * dp], ap[mt], bo[0], bo[1]);
          mma_bf16(dv[mt][2 * dp + 1], ap[mt], bo[2], bo[3]);
          mma_bf16(dk[mt][2 * dp], ads[mt], bq[0], bq[1]);
          mma_bf16(dk[mt][2 * dp + 1], ads[mt], bq[2], bq[3]);
        }
      }
    }

    // Phase 3: dQ = dS K for rows wq3*32.. and columns wd3*DW3.., added to dq_acc.
    {
      float dq[2][DW3 / 8][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int j = 0; j < DW3 / 8; ++j) dq[mt][j][0] = dq[mt][j][1] = dq[mt][j][2] = dq[mt][j][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < Bc / 16; ++kk) {
        uint32_t a[2][4];
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
          ldmatrix_x4_trans(a[mt], sdS + (kk * 16 + lane % 8 + (lane / 16) * 8) * LDS + wq3 * 32 +
                                       mt * 16 + ((lane / 8) % 2) * 8);
#pragma unroll
        for (int dp = 0; dp < DW3 / 16; ++dp) {
          uint32_t bk[4];
          ldmatrix_x4_trans(bk, sK + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * LD + wd3 * DW3 +
                                    dp * 16 + (lane / 16) * 8);
#pragma unroll
          for (int mt = 0; mt < 2; ++mt) {
            mma_bf16(dq[mt][2 * dp], a[mt], bk[0], bk[1]);
            mma_bf16(dq[mt][2 * dp + 1], a[mt], bk[2], bk[3]);
          }
        }
      }
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int r = wq3 * 32 + mt * 16 + g + 8 * h;
          if (tok_s[r] < 0) continue;
          float* dst = p.dq_acc + static_cast<size_t>(sRow[buf * BR + r]) * D + wd3 * DW3 + 2 * qd;
#pragma unroll
          for (int nt = 0; nt < DW3 / 8; ++nt)
            red_add_v2(dst + nt * 8, dq[mt][nt][2 * h], dq[mt][nt][2 * h + 1]);
        }
    }
    cp_async_wait<1>();  // tile i + 1 has landed (issued an iteration ago)
    __syncthreads();     // later iterations overwrite this buffer, P^T and dS^T
  }

  // dK carries the softmax scale (S = scale * Q K^T); dV does not.
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = wk * 32 + mt * 16 + g + 8 * h;
      if (r >= kcount) continue;
      const size_t off = (static_cast<size_t>(key0 + r) * p.Hkv + kvh) * D + wh * DW2 + 2 * qd;
#pragma unroll
      for (int nt = 0; nt < DW2 / 8; ++nt) {
        *reinterpret_cast<uint32_t*>(p.dk + off + nt * 8) =
            pack_bf16(dk[mt][nt][2 * h] * p.scale, dk[mt][nt][2 * h + 1] * p.scale);
        *reinterpret_cast<uint32_t*>(p.dv + off + nt * 8) =
            pack_bf16(dv[mt][nt][2 * h], dv[mt][nt][2 * h + 1]);
      }
    }
}

}  // namespace moba::attn::cuda
