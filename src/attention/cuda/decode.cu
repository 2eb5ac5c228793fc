// CUDA attention for decoding (decode_cuda.h): the bf16 KV cache with fp32 block means, the
// split-K dense decode, the MoBA decode (gate over the means, attention over the selected
// blocks only) and the log-sum-exp combine both end with. Design and expected bandwidth:
// docs/kernel_notes.md, "Decode kernels".
//
// One attention kernel serves both: a CTA owns one (sequence, kv head, tile of 16 query heads
// of its group, range of cache rows). The group's queries are the 16 rows of an mma.sync
// tile (unused rows are zero), so every K/V row is read once per kv head whatever the group
// size. Its 4 warps walk the range in interleaved 32-row tiles, each with its own 3-stage
// cp.async pipeline, then merge their online-softmax states in shared memory and write one
// normalised fp32 partial output and its lse per query head. Dense splits the context into
// equal ranges (enough CTAs to fill every SM at batch 1); MoBA gives each CTA one block of
// the union of the blocks its group's heads selected (or a slice of it), with a mask of the
// heads that selected it: the others get lse -inf and are skipped by the combine.
#include "attention/cuda/decode_cuda.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <vector>

#include "attention/cuda/block_mean.cuh"
#include "attention/cuda/mma.cuh"
#include "core/cuda_check.cuh"
#include "core/cuda_once.h"
#include "core/error.h"

namespace moba::attn::cuda {

namespace {

constexpr int kWarps = 4;       // warps of an attention CTA
constexpr int kRowsTile = 32;   // cache rows per warp tile
constexpr int kStages = 3;      // per-warp cp.async pipeline depth
constexpr int kHeadTile = 16;   // query heads per CTA (the MMA's 16 rows)
constexpr int kMaxGroup = 64;   // Hq / Hkv: the union masks are 64-bit
constexpr int kMaxTopK = 64;    // K: the gate's per-warp winner lists
constexpr int kMinSplitRows = 256;  // dense: rows per CTA at least (else the combine dominates)

// ---------------------------------------------------------------------------------------
// Cache: block means, append.

// Mean of K over one full block of one (sequence, kv head): the S rows summed in double
// (exact for bf16 inputs, so the order does not matter), divided by S in double, rounded to
// float: the value gate.h's block_means and the CPU KVCache compute, and the training GPU
// gate before it splits the float into bf16 terms. last_only: only the block that the
// sequence's last row completed (append), else every full block (grid.x covers them).
__global__ void __launch_bounds__(kBlockMeanThreads)
    block_means_kernel(const bf16* __restrict__ k, float* __restrict__ means,
                       const int32_t* __restrict__ len, int T, int Hkv, int D, int S, int NB,
                       bool last_only) {
  const int b = blockIdx.z, kvh = blockIdx.y, L = len[b];
  int j = blockIdx.x;
  if (last_only) {
    if (L == 0 || L % S != 0) return;
    j = L / S - 1;
  } else if (j >= L / S) {
    return;
  }
  const bf16* base = k + ((static_cast<size_t>(b) * T + static_cast<size_t>(j) * S) * Hkv + kvh) * D;
  const float m = block_mean_column(base, static_cast<size_t>(Hkv) * D, S, D);
  if (static_cast<int>(threadIdx.x) < D) means[((static_cast<size_t>(b) * NB + j) * Hkv + kvh) * D + threadIdx.x] = m;
}

// Writes k_new[b], v_new[b] at row len[b] of sequence b, then len[b] += 1.
__global__ void append_kernel(bf16* __restrict__ k, bf16* __restrict__ v,
                              const bf16* __restrict__ k_new, const bf16* __restrict__ v_new,
                              int32_t* __restrict__ len, int T, int row_elems) {
  const int b = blockIdx.x;
  const int t = len[b];
  const size_t dst = (static_cast<size_t>(b) * T + t) * row_elems;
  const size_t src = static_cast<size_t>(b) * row_elems;
  for (int i = threadIdx.x; i < row_elems; i += blockDim.x) {
    k[dst + i] = k_new[src + i];
    v[dst + i] = v_new[src + i];
  }
  __syncthreads();  // every thread has read len[b]
  if (threadIdx.x == 0) len[b] = t + 1;
}

// ---------------------------------------------------------------------------------------
// MoBA gate.

// Is (s, j) ranked before (t, i)? Higher score first; equal scores: the more recent block.
// A NaN score ranks before nothing and nothing ranks before it after it: it is never picked.
__device__ __forceinline__ bool ranks_before(float s, int j, float t, int i) {
  return s > t || (s == t && j > i);
}

// Scores of every past full block j < c (c the current block) of sequence b against every
// query head of kv head kvh: q (bf16) . mean (fp32), products and sum in double (exact
// products; the sum differs from the CPU's sequential one by reassociation only, ~1e-16
// relative), rounded to float. One warp per block; nothing to do where the gate picks
// every block (c <= K-1) or none (K = 1).
template <int D>
__global__ void gate_scores_kernel(const bf16* __restrict__ q, const float* __restrict__ means,
                                   const int32_t* __restrict__ len, float* __restrict__ scores,
                                   int Hq, int Hkv, int S, int K, int NB, int NBm) {
  const int b = blockIdx.z, kvh = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int j = blockIdx.x * 8 + warp;
  const int c = (len[b] - 1) / S;
  if (K == 1 || c <= K - 1 || j >= c) return;
  constexpr int E = D / 32;  // columns per lane
  const float* m = means + ((static_cast<size_t>(b) * NBm + j) * Hkv + kvh) * D;
  double mv[E];
#pragma unroll
  for (int e = 0; e < E; ++e) mv[e] = static_cast<double>(m[lane + 32 * e]);
  const int G = Hq / Hkv;
  for (int g = 0; g < G; ++g) {
    const int h = kvh * G + g;
    const bf16* qr = q + (static_cast<size_t>(b) * Hq + h) * D;
    double acc = 0.0;
#pragma unroll
    for (int e = 0; e < E; ++e) acc += static_cast<double>(__bfloat162float(qr[lane + 32 * e])) * mv[e];
#pragma unroll
    for (int off = 16; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (lane == 0) scores[(static_cast<size_t>(b) * Hq + h) * NB + j] = static_cast<float>(acc);
  }
}

// Selection of each query head of kv head kvh (one warp per head): K-1 rounds of a warp
// argmax over the past blocks, each round taking the best block ranked after the previous
// winner; slots in gate.h's order. Then thread 0 lists the union of the group's blocks with
// a mask of the heads that chose each (the attention kernel's work list).
__global__ void gate_select_kernel(const float* __restrict__ scores,
                                   const int32_t* __restrict__ len, int32_t* __restrict__ sel,
                                   int32_t* __restrict__ ucount, int32_t* __restrict__ ublock,
                                   unsigned long long* __restrict__ umask, int Hq, int Hkv,
                                   int S, int K, int NB, int U) {
  const int b = blockIdx.y, kvh = blockIdx.x, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int G = Hq / Hkv, kp = K - 1;
  const int c = (len[b] - 1) / S;
  __shared__ int win[8][kMaxTopK];
  for (int g = warp; g < G; g += 8) {
    const int h = kvh * G + g;
    int32_t* out = sel + (static_cast<size_t>(b) * Hq + h) * K;
    if (kp == 0 || c <= kp) {  // the current block alone, or every block up to it
      for (int i = lane; i < K; i += 32) out[i] = kp == 0 ? c : (i <= c ? i : -1);
      continue;
    }
    const float* sc = scores + (static_cast<size_t>(b) * Hq + h) * NB;
    float ps = 0.f;
    int pj = -1;  // the previous round's winner; -1 before the first round
    for (int r = 0; r < kp; ++r) {
      float bs = 0.f;
      int bj = -1;
      for (int j = lane; j < c; j += 32) {
        const float s = sc[j];
        if (pj >= 0 && !ranks_before(ps, pj, s, j)) continue;
        if (s != s) continue;  // NaN
        if (bj < 0 || ranks_before(s, j, bs, bj)) {
          bs = s;
          bj = j;
        }
      }
#pragma unroll
      for (int off = 16; off > 0; off /= 2) {
        const float os = __shfl_xor_sync(0xffffffffu, bs, off);
        const int oj = __shfl_xor_sync(0xffffffffu, bj, off);
        if (oj >= 0 && (bj < 0 || ranks_before(os, oj, bs, bj))) {
          bs = os;
          bj = oj;
        }
      }
      if (lane == 0) win[warp][r] = bj;
      if (bj < 0) {  // nothing left (NaN scores): pad
        for (int r2 = r + 1; r2 < kp; ++r2)
          if (lane == 0) win[warp][r2] = -1;
        break;
      }
      ps = bs;
      pj = bj;
    }
    __syncwarp();
    if (lane == 0) {
      int n = 0;  // valid winners, ascending
      int ids[kMaxTopK];
      for (int r = 0; r < kp; ++r) {
        const int j = win[warp][r];
        if (j < 0) continue;
        int i = n++;
        while (i > 0 && ids[i - 1] > j) {
          ids[i] = ids[i - 1];
          --i;
        }
        ids[i] = j;
      }
      for (int i = 0; i < n; ++i) out[i] = ids[i];
      out[n] = c;
      for (int i = n + 1; i < K; ++i) out[i] = -1;
    }
    __syncwarp();
  }
  __syncthreads();  // the group's selections are in global memory, visible to the block
  if (threadIdx.x != 0) return;
  const size_t u0 = (static_cast<size_t>(b) * Hkv + kvh) * U;
  int n = 0;
  for (int g = 0; g < G; ++g) {
    const int32_t* s = sel + (static_cast<size_t>(b) * Hq + kvh * G + g) * K;
    for (int i = 0; i < K; ++i) {
      const int j = s[i];
      if (j < 0) continue;
      int e = 0;
      while (e < n && ublock[u0 + e] != j) ++e;
      if (e == n) {
        ublock[u0 + e] = j;
        umask[u0 + e] = 0ull;
        ++n;
      }
      umask[u0 + e] |= 1ull << g;
    }
  }
  ucount[static_cast<size_t>(b) * Hkv + kvh] = n;
}

// ---------------------------------------------------------------------------------------
// Attention over a range of cache rows, and the combine.

struct AttnArgs {
  const bf16* q;
  const bf16* k;
  const bf16* v;
  const int32_t* len;
  float* part_o;    // (B, Hq, P, D)
  float* part_lse;  // (B, Hq, P), natural log; -inf = no partial
  int T, Hq, Hkv, G, HT, S, P;
  float scale_log2;
  int chunk;  // dense: rows per split
  // MoBA: the union work lists of gate_select_kernel, each block cut in `sub` slices of
  // sub_rows rows.
  const int32_t* ucount;
  const int32_t* ublock;
  const unsigned long long* umask;
  int U, sub, sub_rows;
};

template <int D>
struct AttnTraits {
  static constexpr int kLd = D + 8;  // padded rows: conflict-free ldmatrix
  static constexpr int kStageElems = 2 * kRowsTile * kLd;  // K and V of one warp tile
  static constexpr int kPipeBytes = kWarps * kStages * kStageElems * 2;
  static constexpr int kMergeBytes = kWarps * kHeadTile * (D + 2) * 4;
  static constexpr int kSmemBytes = kPipeBytes > kMergeBytes ? kPipeBytes : kMergeBytes;
};

template <int D, bool MOBA>
__global__ void __launch_bounds__(kWarps * 32) decode_attn_kernel(const AttnArgs a) {
  using namespace detail;
  using Tr = AttnTraits<D>;
  constexpr int LD = Tr::kLd;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int b = blockIdx.z, kvh = blockIdx.y / a.HT, ht = blockIdx.y % a.HT;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, qd = lane % 4;
  const int len = a.len[b];
  const int p = blockIdx.x;
  const int h0 = kvh * a.G + ht * kHeadTile;             // first query head of the tile
  const int nh = min(kHeadTile, a.G - ht * kHeadTile);  // heads in the tile

  int r0 = 0, r1 = 0;
  unsigned mask = 0;  // heads of the tile that attend rows [r0, r1)
  if constexpr (MOBA) {
    const int e = p / a.sub, si = p % a.sub;
    const size_t u = static_cast<size_t>(b) * a.Hkv + kvh;
    if (e < a.ucount[u]) {
      const int j = a.ublock[u * a.U + e];
      mask = static_cast<unsigned>((a.umask[u * a.U + e] >> (ht * kHeadTile)) & 0xffffull);
      r0 = j * a.S + si * a.sub_rows;
      r1 = min(min((j + 1) * a.S, len), r0 + a.sub_rows);
    }
  } else {
    r0 = p * a.chunk;
    r1 = min(len, r0 + a.chunk);
    mask = 0xffffu;
  }
  if (nh < kHeadTile) mask &= (1u << nh) - 1u;
  if (r0 >= r1) mask = 0;
  if (mask == 0) {  // nothing to attend: no partial for any head of the tile
    if (tid < nh) a.part_lse[(static_cast<size_t>(b) * a.Hq + h0 + tid) * a.P + p] = -INFINITY;
    return;
  }

  // Q tile in registers as A fragments: row r = head h0 + r (zero past the group's heads).
  uint32_t qa[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk)
#pragma unroll
    for (int x = 0; x < 4; ++x) {
      const int r = g + 8 * (x % 2), col = kk * 16 + 2 * qd + 8 * (x / 2);
      qa[kk][x] = r < nh ? *reinterpret_cast<const uint32_t*>(
                               a.q + (static_cast<size_t>(b) * a.Hq + h0 + r) * D + col)
                         : 0u;
    }

  bf16* pipe = reinterpret_cast<bf16*>(smem_raw) + warp * kStages * Tr::kStageElems;
  const size_t row_stride = static_cast<size_t>(a.Hkv) * D;
  const bf16* kbase = a.k + (static_cast<size_t>(b) * a.T * a.Hkv + kvh) * D;
  const bf16* vbase = a.v + (static_cast<size_t>(b) * a.T * a.Hkv + kvh) * D;
  // This warp's tiles: rows r0 + (warp + kWarps * i) * kRowsTile.
  const int n_tiles_all = (r1 - r0 + kRowsTile - 1) / kRowsTile;
  const int n_tiles = n_tiles_all > warp ? (n_tiles_all - warp + kWarps - 1) / kWarps : 0;
  auto tile_row = [&](int i) { return r0 + (warp + kWarps * i) * kRowsTile; };
  auto load_tile = [&](int i) {
    bf16* sk = pipe + (i % kStages) * Tr::kStageElems;
    bf16* sv = sk + kRowsTile * LD;
    const int t0 = tile_row(i);
    constexpr int kChunks = D / 8;
#pragma unroll
    for (int x = lane; x < kRowsTile * kChunks; x += 32) {
      const int r = x / kChunks, c = x % kChunks;
      const bool ok = t0 + r < r1;
      const size_t off = ok ? static_cast<size_t>(t0 + r) * row_stride + c * 8 : 0;
      cp_async_16(sk + r * LD + c * 8, kbase + off, ok ? 16 : 0);
      cp_async_16(sv + r * LD + c * 8, vbase + off, ok ? 16 : 0);
    }
  };
#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) {
    if (i < n_tiles) load_tile(i);
    cp_async_commit();
  }

  float acc[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};
  const float sl2 = a.scale_log2;

  for (int it = 0; it < n_tiles; ++it) {
    if (it + kStages - 1 < n_tiles) load_tile(it + kStages - 1);
    cp_async_commit();
    cp_async_wait<kStages - 1>();
    __syncwarp();
    const bf16* k_s = pipe + (it % kStages) * Tr::kStageElems;
    const bf16* v_s = k_s + kRowsTile * LD;
    const int t0 = tile_row(it);

    float s[kRowsTile / 8][4];
#pragma unroll
    for (int i = 0; i < kRowsTile / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
#pragma unroll
      for (int np = 0; np < kRowsTile / 16; ++np) {
        uint32_t bm[4];
        ldmatrix_x4(bm, k_s + (np * 16 + lane % 8 + (lane / 16) * 8) * LD + kk * 16 +
                            ((lane / 8) % 2) * 8);
        mma_bf16(s[2 * np], qa[kk], bm[0], bm[1]);
        mma_bf16(s[2 * np + 1], qa[kk], bm[2], bm[3]);
      }
    // Rows past r1 (zero-filled) are masked; every tile has at least one row before r1.
    float tmax[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < kRowsTile / 8; ++nt)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        if (t0 + nt * 8 + 2 * qd + (c & 1) >= r1) s[nt][c] = -INFINITY;
        tmax[c / 2] = fmaxf(tmax[c / 2], s[nt][c]);
      }
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      float mx = fmaxf(tmax[hh], __shfl_xor_sync(0xffffffffu, tmax[hh], 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(row_max[hh], mx);
      const float m_use = __fmul_rn(m_new == -INFINITY ? 0.f : m_new, sl2);
      const float alpha =  // see fwd_kernel.cuh
          m_new == row_max[hh] ? 1.f : exp2f(__fmul_rn(row_max[hh], sl2) - m_use);
      row_max[hh] = m_new;
      row_sum[hh] *= alpha;
#pragma unroll
      for (int i = 0; i < D / 8; ++i) {
        acc[i][2 * hh] *= alpha;
        acc[i][2 * hh + 1] *= alpha;
      }
#pragma unroll
      for (int nt = 0; nt < kRowsTile / 8; ++nt) {
        s[nt][2 * hh] = exp2f(fmaf(s[nt][2 * hh], sl2, -m_use));
        s[nt][2 * hh + 1] = exp2f(fmaf(s[nt][2 * hh + 1], sl2, -m_use));
        row_sum[hh] += s[nt][2 * hh] + s[nt][2 * hh + 1];
      }
    }
    // O += P V, P from the score registers (bf16 for the MMA).
#pragma unroll
    for (int kk = 0; kk < kRowsTile / 16; ++kk) {
      uint32_t pa[4];
      pa[0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
      pa[1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
      pa[2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      pa[3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t bv[4];
        ldmatrix_x4_trans(bv, v_s + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * LD + dp * 16 +
                                  (lane / 16) * 8);
        mma_bf16(acc[2 * dp], pa, bv[0], bv[1]);
        mma_bf16(acc[2 * dp + 1], pa, bv[2], bv[3]);
      }
    }
    __syncwarp();  // a later load_tile overwrites this stage
  }
  cp_async_wait<0>();
  __syncthreads();  // every warp is done with the pipeline: reuse it for the merge

  // Merge the 4 warps' states: (max, sum) per row, unnormalised O.
  float* sO = reinterpret_cast<float*>(smem_raw);     // [kWarps][16][D]
  float* sM = sO + kWarps * kHeadTile * D;            // [kWarps][16]
  float* sL = sM + kWarps * kHeadTile;                // [kWarps][16]
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    float l = row_sum[hh] + __shfl_xor_sync(0xffffffffu, row_sum[hh], 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const int r = g + 8 * hh;
    if (qd == 0) {
      sM[warp * kHeadTile + r] = row_max[hh];
      sL[warp * kHeadTile + r] = l;
    }
#pragma unroll
    for (int i = 0; i < D / 8; ++i) {
      float* o = sO + (warp * kHeadTile + r) * D + i * 8 + 2 * qd;
      o[0] = acc[i][2 * hh];
      o[1] = acc[i][2 * hh + 1];
    }
  }
  __syncthreads();
  constexpr float kLn2 = 0.6931471805599453f;
  for (int x = tid; x < kHeadTile * D; x += kWarps * 32) {
    const int r = x / D, d = x % D;
    if (r >= nh) break;
    const size_t row = (static_cast<size_t>(b) * a.Hq + h0 + r) * a.P + p;
    if (!((mask >> r) & 1u)) {
      if (d == 0) a.part_lse[row] = -INFINITY;
      continue;
    }
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sM[w * kHeadTile + r]);
    float L = 0.f, O = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float mw = sM[w * kHeadTile + r];
      if (mw == -INFINITY) continue;  // a warp without tiles
      const float f = exp2f((mw - M) * sl2);
      L += sL[w * kHeadTile + r] * f;
      O += sO[(w * kHeadTile + r) * D + d] * f;
    }
    a.part_o[row * D + d] = O / L;
    if (d == 0) a.part_lse[row] = fmaf(M, sl2, log2f(L)) * kLn2;
  }
}

// out[b, h] = sum_p exp(lse_p - M) o_p / sum_p exp(lse_p - M), lse = M + log(sum): the
// partials of one (sequence, query head) merged by their log-sum-exps (natural log).
// Partials with lse -inf were never written and are skipped.
__global__ void combine_kernel(const float* __restrict__ part_o, const float* __restrict__ part_lse,
                               bf16* __restrict__ out, float* __restrict__ lse, int Hq, int D,
                               int P) {
  const int h = blockIdx.x, b = blockIdx.y;
  const size_t row = static_cast<size_t>(b) * Hq + h;
  const float* pl = part_lse + row * P;
  float M = -INFINITY;
  for (int p = 0; p < P; ++p) M = fmaxf(M, pl[p]);
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float L = 0.f, O = 0.f;
    for (int p = 0; p < P; ++p) {
      const float l = pl[p];
      if (l == -INFINITY) continue;
      const float w = expf(l - M);
      L += w;
      O += w * part_o[(row * P + p) * D + d];
    }
    out[row * D + d] = __float2bfloat16_rn(O / L);
    if (d == 0) lse[row] = M + logf(L);
  }
}

template <typename T>
T* device_alloc(size_t count, const char* what) {
  void* p = nullptr;
  const size_t bytes = sizeof(T) * std::max<size_t>(1, count);
  const cudaError_t e = cudaMalloc(&p, bytes);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear the error: the caller may free memory and retry
    MOBA_CHECK(false, "decode: cannot allocate ", bytes, " bytes of device memory for ", what,
               " (", cudaGetErrorString(e), ")");
  }
  return static_cast<T*>(p);
}

// Frees each (cudaFree of nullptr does nothing): the destructors, and the constructors'
// cleanup when an allocation fails part way.
void free_device(std::initializer_list<void*> ptrs) {
  for (void* p : ptrs) cudaFree(p);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

// ---------------------------------------------------------------------------------------
// DecodeCache

DecodeCache::DecodeCache(int64_t batch, int64_t capacity, int64_t kv_heads, int64_t head_dim,
                         int64_t block_size)
    : B_(batch), T_(capacity), Hkv_(kv_heads), D_(head_dim), S_(block_size) {
  MOBA_CHECK(B_ >= 1 && T_ >= 1 && Hkv_ >= 1 && S_ >= 1,
             "DecodeCache: batch, capacity, kv heads and block size must be >= 1, got B=", B_,
             " T_max=", T_, " Hkv=", Hkv_, " S=", S_);
  MOBA_CHECK(D_ == 64 || D_ == 128, "DecodeCache: head dim must be 64 or 128 (the decode "
             "kernels' tiles), got ", D_);
  MOBA_CHECK(T_ <= (int64_t{1} << 30), "DecodeCache: capacity ", T_, " exceeds 2^30 tokens");
  const size_t kv = static_cast<size_t>(B_ * T_ * Hkv_ * D_);
  const size_t nm = static_cast<size_t>(B_ * (T_ / S_) * Hkv_ * D_);
  len_.assign(static_cast<size_t>(B_), 0);
  try {
    k_ = device_alloc<bf16>(kv, "the K cache");
    v_ = device_alloc<bf16>(kv, "the V cache");
    means_ = device_alloc<float>(nm, "the block means");
    len_dev_ = device_alloc<int32_t>(static_cast<size_t>(B_), "the lengths");
    cu_dev_ = device_alloc<int32_t>(static_cast<size_t>(B_ + 1), "cu_seqlens");
  } catch (...) {
    free_device({k_, v_, means_, len_dev_, cu_dev_});
    throw;
  }
  CUDA_CHECK(cudaMemset(len_dev_, 0, sizeof(int32_t) * static_cast<size_t>(B_)));
}

DecodeCache::~DecodeCache() { free_device({k_, v_, means_, len_dev_, cu_dev_}); }

int64_t DecodeCache::max_len() const { return *std::max_element(len_.begin(), len_.end()); }

size_t DecodeCache::bytes() const {
  const size_t kv = static_cast<size_t>(B_ * T_ * Hkv_ * D_);
  return 2 * kv * sizeof(bf16) + static_cast<size_t>(B_ * (T_ / S_) * Hkv_ * D_) * sizeof(float) +
         static_cast<size_t>(2 * B_ + 1) * sizeof(int32_t);
}

void DecodeCache::upload_lengths_and_means(cudaStream_t stream, int64_t max_full_blocks) {
  std::vector<int32_t> l32(len_.begin(), len_.end());
  CUDA_CHECK(cudaMemcpyAsync(len_dev_, l32.data(), sizeof(int32_t) * l32.size(),
                             cudaMemcpyHostToDevice, stream));
  if (max_full_blocks > 0) {
    block_means_kernel<<<dim3(static_cast<unsigned>(max_full_blocks), static_cast<unsigned>(Hkv_),
                              static_cast<unsigned>(B_)),
                         kBlockMeanThreads, 0, stream>>>(k_, means_, len_dev_, static_cast<int>(T_),
                                                   static_cast<int>(Hkv_), static_cast<int>(D_),
                                                   static_cast<int>(S_),
                                                   static_cast<int>(T_ / S_), false);
    CUDA_CHECK_LAUNCH();
  }
  // The staging copy of l32 is done when cudaMemcpyAsync returns (pageable source); the
  // synchronisation keeps that true for pinned-looking allocators too.
  CUDA_CHECK(cudaStreamSynchronize(stream));
}

void DecodeCache::fill(const std::vector<int64_t>& cu_seqlens, const bf16* k, const bf16* v,
                       cudaStream_t stream) {
  MOBA_CHECK(static_cast<int64_t>(cu_seqlens.size()) == B_ + 1, "DecodeCache::fill: cu_seqlens has ",
             cu_seqlens.size(), " entries, want batch + 1 = ", B_ + 1);
  MOBA_CHECK(cu_seqlens[0] == 0, "DecodeCache::fill: cu_seqlens[0] must be 0, got ", cu_seqlens[0]);
  for (int64_t b = 0; b < B_; ++b) {
    const int64_t n = cu_seqlens[b + 1] - cu_seqlens[b];
    MOBA_CHECK(n >= 0, "DecodeCache::fill: cu_seqlens decreases at sequence ", b);
    MOBA_CHECK(n <= T_, "DecodeCache::fill: sequence ", b, " has ", n,
               " tokens, more than the capacity ", T_);
  }
  const size_t row = static_cast<size_t>(Hkv_ * D_);
  int64_t max_n = 0;
  for (int64_t b = 0; b < B_; ++b) {
    const int64_t n = cu_seqlens[b + 1] - cu_seqlens[b];
    max_n = std::max(max_n, n);
    len_[b] = n;
    if (n == 0) continue;
    const size_t dst = static_cast<size_t>(b * T_) * row, src = static_cast<size_t>(cu_seqlens[b]) * row;
    CUDA_CHECK(cudaMemcpyAsync(k_ + dst, k + src, sizeof(bf16) * row * n, cudaMemcpyDeviceToDevice,
                               stream));
    CUDA_CHECK(cudaMemcpyAsync(v_ + dst, v + src, sizeof(bf16) * row * n, cudaMemcpyDeviceToDevice,
                               stream));
  }
  upload_lengths_and_means(stream, max_n / S_);
}

void DecodeCache::adopt(const std::vector<int64_t>& lengths, cudaStream_t stream,
                        bool means_written) {
  MOBA_CHECK(static_cast<int64_t>(lengths.size()) == B_, "DecodeCache::adopt: ", lengths.size(),
             " lengths, want batch = ", B_);
  int64_t max_n = 0;
  for (int64_t b = 0; b < B_; ++b) {
    MOBA_CHECK(lengths[b] >= 0 && lengths[b] <= T_, "DecodeCache::adopt: sequence ", b,
               " length ", lengths[b], " is outside [0, capacity ", T_, "]");
    max_n = std::max(max_n, lengths[b]);
  }
  len_ = lengths;
  upload_lengths_and_means(stream, means_written ? 0 : max_n / S_);
}

void DecodeCache::append(const bf16* k_new, const bf16* v_new, cudaStream_t stream) {
  for (int64_t b = 0; b < B_; ++b)
    MOBA_CHECK(len_[b] < T_, "DecodeCache::append: sequence ", b, " is at capacity (", T_,
               " tokens)");
  append_kernel<<<static_cast<unsigned>(B_), 256, 0, stream>>>(
      k_, v_, k_new, v_new, len_dev_, static_cast<int>(T_), static_cast<int>(Hkv_ * D_));
  CUDA_CHECK_LAUNCH();
  bool completes = false;
  for (int64_t b = 0; b < B_; ++b) completes |= ++len_[b] % S_ == 0;
  if (completes) {  // the mean of every block that this row completed
    block_means_kernel<<<dim3(1, static_cast<unsigned>(Hkv_), static_cast<unsigned>(B_)),
                         kBlockMeanThreads, 0, stream>>>(k_, means_, len_dev_, static_cast<int>(T_),
                                      static_cast<int>(Hkv_), static_cast<int>(D_),
                                      static_cast<int>(S_), static_cast<int>(T_ / S_), true);
    CUDA_CHECK_LAUNCH();
  }
}

// ---------------------------------------------------------------------------------------
// DecodePlan

struct DecodePlan::Impl {
  int64_t B, T, Hq, Hkv, G, HT, D, S, K;
  float scale_log2;
  int sms;
  int64_t dense_splits_max;  // dense partials per (b, q head)
  int64_t U;                 // MoBA: union entries per (b, kv head), G*K
  int64_t sub, sub_rows;     // MoBA: slices per block, rows per slice
  int64_t P;                 // partials allocated per (b, q head)
  int64_t NB;                // blocks of capacity: T / S (score rows)
  float* part_o = nullptr;
  float* part_lse = nullptr;
  float* scores = nullptr;
  int32_t* sel = nullptr;
  int32_t* ucount = nullptr;
  int32_t* ublock = nullptr;
  unsigned long long* umask = nullptr;
  size_t bytes = 0;

  ~Impl() { free_device({part_o, part_lse, scores, sel, ucount, ublock, umask}); }
};

DecodePlan::DecodePlan(int64_t batch, int64_t capacity, int64_t num_q_heads, int64_t num_kv_heads,
                       int64_t head_dim, const MobaConfig& cfg, const Options& opt) {
  cfg.validate();
  MOBA_CHECK(batch >= 1 && capacity >= 1, "DecodePlan: batch and capacity must be >= 1, got B=",
             batch, " T_max=", capacity);
  MOBA_CHECK(num_kv_heads >= 1 && num_q_heads >= num_kv_heads && num_q_heads % num_kv_heads == 0,
             "DecodePlan: query heads (", num_q_heads, ") must be a positive multiple of kv heads (",
             num_kv_heads, ")");
  MOBA_CHECK(num_q_heads / num_kv_heads <= kMaxGroup, "DecodePlan: at most ", kMaxGroup,
             " query heads per kv head, got ", num_q_heads / num_kv_heads);
  MOBA_CHECK(head_dim == 64 || head_dim == 128, "DecodePlan: head dim must be 64 or 128, got ",
             head_dim);
  MOBA_CHECK(cfg.top_k <= kMaxTopK, "DecodePlan: top-k at most ", kMaxTopK, ", got ", cfg.top_k);
  MOBA_CHECK(capacity <= (int64_t{1} << 30), "DecodePlan: capacity ", capacity, " exceeds 2^30");
  auto* im = new Impl{};
  impl_ = im;
  im->B = batch;
  im->T = capacity;
  im->Hq = num_q_heads;
  im->Hkv = num_kv_heads;
  im->G = num_q_heads / num_kv_heads;
  im->HT = ceil_div(im->G, kHeadTile);
  im->D = head_dim;
  im->S = cfg.block_size;
  im->K = cfg.top_k;
  const double scale = opt.softmax_scale > 0 ? opt.softmax_scale : 1.0 / std::sqrt(double(head_dim));
  im->scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  int dev = 0, sms = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  im->sms = sms;
  // CTAs resident per SM: one at D = 128 (204 KB of pipeline), two at D = 64. Aim at 4
  // waves' worth so that the last wave is a small share.
  const int64_t per_sm = head_dim == 128 ? 1 : 2;
  const int64_t target = 4 * per_sm * sms;
  const int64_t heads_units = im->B * im->Hkv * im->HT;
  im->dense_splits_max = std::max<int64_t>(
      1, std::min(ceil_div(target, heads_units), ceil_div(capacity, kMinSplitRows)));
  im->NB = std::max<int64_t>(1, capacity / im->S);
  im->U = im->G * im->K;
  // MoBA slices: enough CTAs over K blocks per kv head, slices of >= 128 rows (one tile
  // per warp).
  const int64_t want = ceil_div(target, heads_units * im->K);
  const int64_t max_sub = std::max<int64_t>(1, im->S / (kRowsTile * kWarps));
  im->sub = std::clamp<int64_t>(want, 1, max_sub);
  im->sub_rows = ceil_div(ceil_div(im->S, im->sub), kRowsTile) * kRowsTile;
  im->sub = ceil_div(im->S, im->sub_rows);
  im->P = std::max(im->dense_splits_max, im->U * im->sub);
  const size_t rows = static_cast<size_t>(im->B * im->Hq);
  try {
    im->part_o = device_alloc<float>(rows * im->P * im->D, "decode partial outputs");
    im->part_lse = device_alloc<float>(rows * im->P, "decode partial lse");
    im->scores = device_alloc<float>(rows * im->NB, "gate scores");
    im->sel = device_alloc<int32_t>(rows * im->K, "the selection");
    const size_t units = static_cast<size_t>(im->B * im->Hkv);
    im->ucount = device_alloc<int32_t>(units, "the block unions");
    im->ublock = device_alloc<int32_t>(units * im->U, "the block unions");
    im->umask = device_alloc<unsigned long long>(units * im->U, "the block unions");
    im->bytes = sizeof(float) * rows * im->P * (im->D + 1) + sizeof(float) * rows * im->NB +
                sizeof(int32_t) * rows * im->K + units * (sizeof(int32_t) * (1 + im->U) + 8 * im->U);
  } catch (...) {
    delete im;  // frees what was allocated
    impl_ = nullptr;
    throw;
  }
}

DecodePlan::~DecodePlan() { delete impl_; }

size_t DecodePlan::workspace_bytes() const { return impl_->bytes; }

// ---------------------------------------------------------------------------------------
// decode_dense, decode_moba

namespace {

void check_cache(const DecodePlan::Impl& im, const DecodeCache& cache, bool moba, const char* what) {
  MOBA_CHECK(cache.batch() == im.B && cache.kv_heads() == im.Hkv && cache.head_dim() == im.D,
             what, ": cache (B=", cache.batch(), " Hkv=", cache.kv_heads(), " D=", cache.head_dim(),
             ") does not match the plan (B=", im.B, " Hkv=", im.Hkv, " D=", im.D, ")");
  MOBA_CHECK(cache.capacity() <= im.T, what, ": cache capacity ", cache.capacity(),
             " exceeds the plan's ", im.T);
  if (moba)
    MOBA_CHECK(cache.block_size() == im.S, what, ": cache block size ", cache.block_size(),
               " differs from the plan's S = ", im.S);
  for (int64_t b = 0; b < im.B; ++b)
    MOBA_CHECK(cache.len()[b] >= 1, what, ": sequence ", b, " is empty (no query token)");
}

template <int D, bool MOBA>
void launch_attn(const AttnArgs& a, dim3 grid, cudaStream_t stream) {
  constexpr int smem = AttnTraits<D>::kSmemBytes;
  constexpr auto kernel = decode_attn_kernel<D, MOBA>;
  set_smem_once<kernel>(smem);
  kernel<<<grid, kWarps * 32, smem, stream>>>(a);
  CUDA_CHECK_LAUNCH();
}

AttnArgs base_args(const DecodePlan::Impl& im, const DecodeCache& cache, const bf16* q) {
  AttnArgs a{};
  a.q = q;
  a.k = cache.k();
  a.v = cache.v();
  a.len = cache.len_dev();
  a.part_o = im.part_o;
  a.part_lse = im.part_lse;
  a.T = static_cast<int>(cache.capacity());
  a.Hq = static_cast<int>(im.Hq);
  a.Hkv = static_cast<int>(im.Hkv);
  a.G = static_cast<int>(im.G);
  a.HT = static_cast<int>(im.HT);
  a.S = static_cast<int>(im.S);
  a.scale_log2 = im.scale_log2;
  return a;
}

void combine(const DecodePlan::Impl& im, int P, bf16* out, float* lse, cudaStream_t stream) {
  combine_kernel<<<dim3(static_cast<unsigned>(im.Hq), static_cast<unsigned>(im.B)),
                   static_cast<unsigned>(im.D), 0, stream>>>(im.part_o, im.part_lse, out, lse,
                                                             static_cast<int>(im.Hq),
                                                             static_cast<int>(im.D), P);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void decode_dense(DecodePlan& plan, const DecodeCache& cache, const bf16* q, bf16* out, float* lse,
                  cudaStream_t stream) {
  const DecodePlan::Impl& im = plan.impl();
  check_cache(im, cache, false, "decode_dense");
  const int64_t max_len = cache.max_len();
  int64_t splits = std::min(im.dense_splits_max, ceil_div(max_len, kMinSplitRows));
  splits = std::max<int64_t>(1, splits);
  const int64_t chunk = ceil_div(ceil_div(max_len, splits), kRowsTile * kWarps) * kRowsTile * kWarps;
  splits = ceil_div(max_len, chunk);
  AttnArgs a = base_args(im, cache, q);
  a.P = static_cast<int>(splits);
  a.chunk = static_cast<int>(chunk);
  const dim3 grid(static_cast<unsigned>(splits), static_cast<unsigned>(im.Hkv * im.HT),
                  static_cast<unsigned>(im.B));
  if (im.D == 64) launch_attn<64, false>(a, grid, stream);
  else launch_attn<128, false>(a, grid, stream);
  combine(im, a.P, out, lse, stream);
}

void decode_moba(DecodePlan& plan, const DecodeCache& cache, const bf16* q, bf16* out, float* lse,
                 int32_t* sel, cudaStream_t stream) {
  const DecodePlan::Impl& im = plan.impl();
  check_cache(im, cache, true, "decode_moba");
  int32_t* s = sel ? sel : im.sel;
  const int64_t max_c = (cache.max_len() - 1) / im.S;  // largest current block
  const int NB = static_cast<int>(im.NB);
  if (im.K > 1 && max_c > im.K - 1) {
    const dim3 grid(static_cast<unsigned>(ceil_div(max_c, 8)), static_cast<unsigned>(im.Hkv),
                    static_cast<unsigned>(im.B));
    auto kernel = im.D == 64 ? gate_scores_kernel<64> : gate_scores_kernel<128>;
    kernel<<<grid, 256, 0, stream>>>(q, cache.means(), cache.len_dev(), im.scores,
                                     static_cast<int>(im.Hq), static_cast<int>(im.Hkv),
                                     static_cast<int>(im.S), static_cast<int>(im.K), NB,
                                     static_cast<int>(cache.capacity() / im.S));
    CUDA_CHECK_LAUNCH();
  }
  gate_select_kernel<<<dim3(static_cast<unsigned>(im.Hkv), static_cast<unsigned>(im.B)), 256, 0,
                       stream>>>(im.scores, cache.len_dev(), s, im.ucount, im.ublock, im.umask,
                                 static_cast<int>(im.Hq), static_cast<int>(im.Hkv),
                                 static_cast<int>(im.S), static_cast<int>(im.K), NB,
                                 static_cast<int>(im.U));
  CUDA_CHECK_LAUNCH();
  // The union of a group has at most min(G*K, blocks so far) entries.
  const int64_t U_used = std::min(im.U, max_c + 1);
  AttnArgs a = base_args(im, cache, q);
  a.ucount = im.ucount;
  a.ublock = im.ublock;
  a.umask = im.umask;
  a.U = static_cast<int>(im.U);
  a.sub = static_cast<int>(im.sub);
  a.sub_rows = static_cast<int>(im.sub_rows);
  a.P = static_cast<int>(U_used * im.sub);
  const dim3 grid(static_cast<unsigned>(a.P), static_cast<unsigned>(im.Hkv * im.HT),
                  static_cast<unsigned>(im.B));
  if (im.D == 64) launch_attn<64, true>(a, grid, stream);
  else launch_attn<128, true>(a, grid, stream);
  combine(im, a.P, out, lse, stream);
}

}  // namespace moba::attn::cuda
