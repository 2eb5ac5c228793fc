// Flash-attention forward over a tile of query rows and a contiguous range of keys, on
// tensor cores (mma.sync m16n8k16, bf16 in, fp32 accumulators). One kernel serves three
// callers, picked at compile time:
//   kDense       rows = a tile of consecutive queries of one head; keys = sequence start
//                up to the tile's last query (causal). Writes out and lse.
//   kMobaCurrent the same rows; keys = the start of the rows' current block up to the last
//                query (the causal current-block part of MoBA). Its epilogue merges the
//                rows' past-block partials (written before by kMobaPast) by their lse and
//                writes the final out and lse.
//   kMobaPast    rows = a list of (token, query head, slot) entries that all selected one
//                full past block of one kv head ("gather"); keys = that whole block, no
//                mask. Writes a normalised fp32 partial output and lse per entry.
// Each warp owns MT slices of 16 query rows (MT = 2: every K/V fragment loaded from shared
// memory feeds twice the MMAs, which is what bounds mma.sync attention); a CTA of NW warps
// owns 16*NW*MT rows and walks key tiles of 64, double-buffered through cp.async.
#pragma once

#include <cuda_bf16.h>

#include <cmath>

#include "attention/cuda/mma.cuh"
#include "attention/cuda/params.h"

namespace moba::attn::cuda {

enum class FwdMode { kDense, kMobaCurrent, kMobaPast };

template <int D, int NW, int MT>
struct FwdTraits {
  static_assert(D % 16 == 0 && D <= 256, "head dim must be a multiple of 16");
  static constexpr int kThreads = NW * 32;
  static constexpr int kBr = 16 * NW * MT;  // query rows per CTA
  static constexpr int kBc = 64;       // keys per tile: S (>= 64, power of two) is a multiple
  // Rows padded by 16 bytes: the 8 row addresses of one ldmatrix then fall in distinct
  // bank groups (an unpadded 128- or 256-byte row maps every row to the same banks).
  static constexpr int kLd = D + 8;
  static constexpr int kSmemBytes = (kBr + 4 * kBc) * kLd * 2 + kBr * 2 * 4;
};

namespace detail {

// Copies `rows` rows of D bf16 from global (row r at src_of(r), nullptr = zero-fill) into
// shared memory with row stride LD, 16 bytes per cp.async.
template <int D, int LD, int THREADS, typename SrcOf>
__device__ __forceinline__ void load_rows(__nv_bfloat16* dst, int rows, const __nv_bfloat16* zero_src,
                                          SrcOf src_of) {
  constexpr int kChunks = D / 8;
  for (int i = threadIdx.x; i < rows * kChunks; i += THREADS) {
    const int r = i / kChunks, c = i % kChunks;
    const __nv_bfloat16* src = src_of(r);
    cp_async_16(dst + r * LD + c * 8, src ? src + c * 8 : zero_src, src ? 16 : 0);
  }
}

}  // namespace detail

template <int D, int NW, int MT, FwdMode MODE>
__global__ void __launch_bounds__(NW * 32) attn_fwd_kernel(const AttnParams p) {
  using namespace detail;
  using T = FwdTraits<D, NW, MT>;
  constexpr int Br = T::kBr, Bc = T::kBc, LD = T::kLd, THREADS = T::kThreads;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __nv_bfloat16* sQ = reinterpret_cast<__nv_bfloat16*>(smem_raw);  // [Br][LD]
  __nv_bfloat16* sK = sQ + Br * LD;                                // [2][Bc][LD]
  __nv_bfloat16* sV = sK + 2 * Bc * LD;                            // [2][Bc][LD]
  int* sTok = reinterpret_cast<int*>(sV + 2 * Bc * LD);            // [Br] token, -1 = no row
  int* sEnt = sTok + Br;  // [Br] kMobaPast: entry; else query head row id (tok * Hq + h)

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, qd = lane % 4;

  int kvh, k_begin, k_end, first_tok = 0, head = 0, seq_start = 0;
  if constexpr (MODE == FwdMode::kMobaPast) {
    // The launch's tiles [first, *num_tiles): one chunk's of the whole batch's index.
    const int first = p.tile_first != nullptr ? *p.tile_first : 0;
    if (static_cast<int>(blockIdx.x) >= *p.num_tiles - first) return;
    const int4 t = p.tiles[first + static_cast<int>(blockIdx.x)];
    k_begin = t.x;
    k_end = t.x + p.S;
    kvh = t.w;
    for (int r = tid; r < Br; r += THREADS) {
      const int e = r < t.z ? p.entries[t.y + r] : -1;
      sEnt[r] = e;
      sTok[r] = e < 0 ? -1 : (e / p.kp) / p.Hq;
    }
  } else {
    const int b = blockIdx.z;
    seq_start = p.cu_seqlens[b];
    const int len = p.cu_seqlens[b + 1] - seq_start;
    // The last tiles (most keys) first. Heads fastest (grid (Hq, tiles, B)): the longest
    // CTAs of every head start in the first wave instead of ending the launch (short
    // sequences); else grid (tiles, Hq, B): CTAs running together share one head's K/V in
    // L2 (long sequences, where the tail is a small part).
    int m = p.heads_fastest ? gridDim.y - 1 - blockIdx.y : gridDim.x - 1 - blockIdx.x;
    if constexpr (MODE == FwdMode::kMobaCurrent) {
      // The launch's rows [q_lo, q_hi) (one chunk of the chunked forward; params.h).
      m += max(0, p.q_lo - seq_start) / Br;
      if (seq_start + m * Br >= p.q_hi) return;
    }
    if (m * Br >= len) return;
    head = p.heads_fastest ? blockIdx.x : blockIdx.y;
    kvh = head / p.group;
    first_tok = seq_start + m * Br;
    const int count = min(Br, len - m * Br);
    k_end = first_tok + count;
    k_begin = MODE == FwdMode::kDense ? seq_start : seq_start + (m * Br / p.S) * p.S;
    for (int r = tid; r < Br; r += THREADS) {
      sTok[r] = r < count ? first_tok + r : -1;
      sEnt[r] = (first_tok + r) * p.Hq + head;
    }
  }
  __syncthreads();

  // Q rows, then the first K/V tile.
  load_rows<D, LD, THREADS>(sQ, Br, p.q, [&](int r) -> const __nv_bfloat16* {
    const int tok = sTok[r];
    if (tok < 0) return nullptr;
    const int h = MODE == FwdMode::kMobaPast ? (sEnt[r] / p.kp) % p.Hq : head;
    return p.q + (static_cast<size_t>(tok) * p.Hq + h) * D;
  });
  auto load_kv = [&](int buf, int kt) {
    auto src = [&](const __nv_bfloat16* base) {
      return [=](int r) -> const __nv_bfloat16* {
        const int tok = kt + r;
        return tok < k_end ? base + (static_cast<size_t>(tok) * p.Hkv + kvh) * D : nullptr;
      };
    };
    load_rows<D, LD, THREADS>(sK + buf * Bc * LD, Bc, p.k, src(p.k));
    load_rows<D, LD, THREADS>(sV + buf * Bc * LD, Bc, p.v, src(p.v));
  };
  load_kv(0, k_begin);
  cp_async_commit();

  // This thread's rows: rbase + mt*16 + 8*half for mt < MT, half < 2 (x = 2*mt + half).
  const int rbase = warp * 16 * MT + g;
  int rtok[2 * MT];
#pragma unroll
  for (int x = 0; x < 2 * MT; ++x) rtok[x] = sTok[rbase + (x / 2) * 16 + 8 * (x % 2)];
  float acc[MT][D / 8][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int i = 0; i < D / 8; ++i) acc[mt][i][0] = acc[mt][i][1] = acc[mt][i][2] = acc[mt][i][3] = 0.f;
  // Running max of the raw scores q.k and this thread's share of the softmax sum. The
  // scale goes into the exponent as one FMA: p = exp2(s * scale*log2e - max * scale*log2e).
  float row_max[2 * MT], row_sum[2 * MT];
#pragma unroll
  for (int x = 0; x < 2 * MT; ++x) {
    row_max[x] = -INFINITY;
    row_sum[x] = 0.f;
  }

  const int n_tiles = (k_end - k_begin + Bc - 1) / Bc;
  for (int it = 0; it < n_tiles; ++it) {
    const int kt = k_begin + it * Bc;
    if (it + 1 < n_tiles) {
      load_kv((it + 1) & 1, kt + Bc);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const __nv_bfloat16* k_s = sK + (it & 1) * Bc * LD;
    const __nv_bfloat16* v_s = sV + (it & 1) * Bc * LD;

    float s[MT][Bc / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int i = 0; i < Bc / 8; ++i) s[mt][i][0] = s[mt][i][1] = s[mt][i][2] = s[mt][i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
        ldmatrix_x4(a[mt], sQ + (warp * 16 * MT + mt * 16 + lane % 16) * LD + kk * 16 + (lane / 16) * 8);
#pragma unroll
      for (int np = 0; np < Bc / 16; ++np) {
        uint32_t b[4];
        ldmatrix_x4(b, k_s + (np * 16 + lane % 8 + (lane / 16) * 8) * LD + kk * 16 +
                           ((lane / 8) % 2) * 8);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_bf16(s[mt][2 * np], a[mt], b[0], b[1]);
          mma_bf16(s[mt][2 * np + 1], a[mt], b[2], b[3]);
        }
      }
    }

    // Causal mask only where the tile reaches past the first row; past blocks need none.
    const bool masked = MODE != FwdMode::kMobaPast && kt + Bc - 1 > first_tok;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int nt = 0; nt < Bc / 8; ++nt)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          if (masked && kt + nt * 8 + 2 * qd + (c & 1) > rtok[2 * mt + c / 2]) s[mt][nt][c] = -INFINITY;
          tile_max[c / 2] = fmaxf(tile_max[c / 2], s[mt][nt][c]);
        }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int x = 2 * mt + h;
        float mx = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(row_max[x], mx);
        // A row with every key masked so far has max -inf: use 0 so that exp2(-inf - -inf)
        // (NaN) is never computed; its probabilities are exp2(-inf) = 0 either way.
        const float m_use = __fmul_rn(m_new == -INFINITY ? 0.f : m_new, p.scale_log2);
        // The rescale is exactly 1 while the max holds: the old max times scale_log2, rounded
        // as m_use was when it was the new max, minus m_use is exactly 0 (both products
        // __fmul_rn, so that no fused multiply-add is contracted from them), and exp2f(0) = 1.
        // (The wgmma step and the decode kernel also select 1 when the max holds; here that
        // select cost the D 128 kMobaCurrent instance 100 bytes of spills at 255 registers.)
        // exp2f(fmaf(old, scale_log2, -m_use)) left fmaf's exact residual of m_use's rounding,
        // up to 1.7e-7 and of one sign while the max holds: row_sum and o gained that factor
        // per key tile, so o / row_sum stayed right but the lse drifted with the tile count
        // (2.2e-3 nats at 2M keys on the H200, 2026-12-03; 5e-7 after: scripts/softmax-drift.py).
        const float alpha = exp2f(__fmul_rn(row_max[x], p.scale_log2) - m_use);
        row_max[x] = m_new;
        row_sum[x] *= alpha;
#pragma unroll
        for (int i = 0; i < D / 8; ++i) {
          acc[mt][i][2 * h] *= alpha;
          acc[mt][i][2 * h + 1] *= alpha;
        }
#pragma unroll
        for (int nt = 0; nt < Bc / 8; ++nt) {
          s[mt][nt][2 * h] = exp2f(fmaf(s[mt][nt][2 * h], p.scale_log2, -m_use));
          s[mt][nt][2 * h + 1] = exp2f(fmaf(s[mt][nt][2 * h + 1], p.scale_log2, -m_use));
          row_sum[x] += s[mt][nt][2 * h] + s[mt][nt][2 * h + 1];
        }
      }
    }

    // O += P V, P straight from the score registers (rounded to bf16 for the MMA).
#pragma unroll
    for (int kk = 0; kk < Bc / 16; ++kk) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        a[mt][0] = pack_bf16(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        a[mt][1] = pack_bf16(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        a[mt][2] = pack_bf16(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        a[mt][3] = pack_bf16(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, v_s + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * LD + dp * 16 +
                                 (lane / 16) * 8);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_bf16(acc[mt][2 * dp], a[mt], b[0], b[1]);
          mma_bf16(acc[mt][2 * dp + 1], a[mt], b[2], b[3]);
        }
      }
    }
    __syncthreads();  // the next iteration's copy overwrites this tile's buffer
  }

  // Epilogue: normalise; write (or merge, then write) each of the thread's rows.
  constexpr float kLn2 = 0.6931471805599453f;
#pragma unroll
  for (int x = 0; x < 2 * MT; ++x) {
    const int mt = x / 2, h = x % 2;
    float l = row_sum[x] + __shfl_xor_sync(0xffffffffu, row_sum[x], 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const int tok = rtok[x];
    if (tok < 0) continue;
    const int r = rbase + mt * 16 + 8 * h;
    const float inv = l > 0.f ? 1.f / l : 0.f;
    const float lse = l > 0.f ? fmaf(row_max[x], p.scale_log2, log2f(l)) * kLn2 : -INFINITY;
    if constexpr (MODE == FwdMode::kMobaPast) {
      const int e = sEnt[r];
      float* dst = p.part_o + static_cast<size_t>(e) * D;
#pragma unroll
      for (int nt = 0; nt < D / 8; ++nt)
        *reinterpret_cast<float2*>(dst + nt * 8 + 2 * qd) =
            make_float2(acc[mt][nt][2 * h] * inv, acc[mt][nt][2 * h + 1] * inv);
      if (qd == 0) p.part_lse[e] = lse;
    } else {
      const int row = sEnt[r];  // tok * Hq + head
      float lse_tot = lse;
#pragma unroll
      for (int nt = 0; nt < D / 8; ++nt) {
        acc[mt][nt][2 * h] *= inv;
        acc[mt][nt][2 * h + 1] *= inv;
      }
      if constexpr (MODE == FwdMode::kMobaCurrent) {
        // Merge by log-sum-exp: out = sum_i exp(lse_i - lse) out_i over the current part
        // and each valid past slot (slot s holds a past block iff sel[s] >= 0 and is not
        // the current block c; the selection is ascending with c last). Two passes over
        // the slots' lse (max, then sum), then one pass over the slots' outputs whose D/8
        // loads are independent (issued together; the slot loop is not unrolled).
        const int kp = p.kp;
        const int c = (tok - seq_start) / p.S;
        const int32_t* sel = p.sel + static_cast<size_t>(row) * p.K;
        const float* plse = p.part_lse + static_cast<size_t>(row) * kp;
        float mx = lse;
        for (int sl = 0; sl < kp; ++sl)
          if (sel[sl] >= 0 && sel[sl] < c) mx = fmaxf(mx, __ldg(plse + sl));
        float sum = expf(lse - mx);
        for (int sl = 0; sl < kp; ++sl)
          if (sel[sl] >= 0 && sel[sl] < c) sum += expf(__ldg(plse + sl) - mx);
        lse_tot = mx + logf(sum);
        const float w_cur = expf(lse - lse_tot);
#pragma unroll
        for (int nt = 0; nt < D / 8; ++nt) {
          acc[mt][nt][2 * h] *= w_cur;
          acc[mt][nt][2 * h + 1] *= w_cur;
        }
        for (int sl = 0; sl < kp; ++sl) {
          if (!(sel[sl] >= 0 && sel[sl] < c)) continue;
          const float w = expf(__ldg(plse + sl) - lse_tot);
          const float2* po = reinterpret_cast<const float2*>(
              p.part_o + (static_cast<size_t>(row) * kp + sl) * D + 2 * qd);
          float2 v[D / 8];
#pragma unroll
          for (int nt = 0; nt < D / 8; ++nt) v[nt] = __ldg(po + nt * 4);
#pragma unroll
          for (int nt = 0; nt < D / 8; ++nt) {
            acc[mt][nt][2 * h] += w * v[nt].x;
            acc[mt][nt][2 * h + 1] += w * v[nt].y;
          }
        }
      }
      __nv_bfloat16* dst = p.o + static_cast<size_t>(row) * D;
#pragma unroll
      for (int nt = 0; nt < D / 8; ++nt)
        *reinterpret_cast<uint32_t*>(dst + nt * 8 + 2 * qd) =
            pack_bf16(acc[mt][nt][2 * h], acc[mt][nt][2 * h + 1]);
      if (qd == 0) p.lse[row] = lse_tot;
    }
  }
}

}  // namespace moba::attn::cuda
