// The MoBA gate and the gather lists on the device.
//
// Gate: block means of K (fp32, split into three bf16 terms), then per (token, query head)
// the fp32 score of every past full block on tensor cores and a running top-(K-1) with
// ties to the more recent block, in registers. The (T, T/S) score matrix is never stored.

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "attention/cuda/attention_cuda.h"
#include "attention/cuda/internal.h"
#include "attention/cuda/fwd_kernel.cuh"
#include "attention/cuda/block_mean.cuh"
#include "attention/cuda/mma.cuh"
#include "attention/gate.h"
#include "core/cuda_check.cuh"
#include "core/env_choice.h"

namespace moba::attn::cuda {
namespace {

constexpr int kGateRows = 128;   // query tokens per gate CTA at MT = 1 (8 warps x 16 rows)
constexpr int kGateThreads = 256;
// MT, m-tiles (of 16 query rows) per warp: 1, or 2 (gate_rows_auto in attention/gate.h, or
// MOBA_GATE_ROWS=256; docs/kernel_notes.md, "v21"): each B fragment of the means read from shared memory then
// feeds two MMAs per warp instead of one, halving the shared-memory reads per score, at
// twice the Q tile (256 rows a CTA) and twice the Q fragments in registers. Only the list
// lengths KM <= 4 (K <= 5) have an MT = 2 instance; longer lists keep MT = 1 (registers).
constexpr int kGateMaxMt = 2;
constexpr int kMaxPast = kMaxTopK - 1;

// Block means of K, kept as three bf16 terms hi + mid + lo (rows, Hkv, 3, D): the fp32
// mean to within ~2^-24 relative. q is bf16, so q . mean = q . hi + q . mid + q . lo are
// three bf16 tensor-core products with fp32 accumulation: fp32 scores at MMA speed.
// The mean is accumulated in double, as the CPU gate does, so both round the same value.
// f32 (may be null): the fp32 means too, row (b, j) at ((b * bps + j) * Hkv + kvh) * D, b the
// row's sequence (block_offset: full blocks before each sequence, B + 1 entries).
__global__ void __launch_bounds__(kBlockMeanThreads)
    block_means_kernel(const __nv_bfloat16* __restrict__ k, const int32_t* __restrict__ block_start,
                       int S, int Hkv, int D, __nv_bfloat16* __restrict__ msplit,
                       float* __restrict__ f32, const int32_t* __restrict__ block_offset, int B,
                       int64_t bps) {
  const int row = blockIdx.x, kvh = blockIdx.y, t = threadIdx.x;
  const __nv_bfloat16* base = k + (static_cast<size_t>(block_start[row]) * Hkv + kvh) * D;
  const float m = block_mean_column(base, static_cast<size_t>(Hkv) * D, S, D);
  if (t >= D) return;
  const __nv_bfloat16 hi = __float2bfloat16_rn(m);
  const float r1 = m - __bfloat162float(hi);
  const __nv_bfloat16 mid = __float2bfloat16_rn(r1);
  const __nv_bfloat16 lo = __float2bfloat16_rn(r1 - __bfloat162float(mid));
  __nv_bfloat16* dst = msplit + (static_cast<size_t>(row) * Hkv + kvh) * 3 * D + t;
  dst[0] = hi;
  dst[D] = mid;
  dst[2 * D] = lo;
  if (f32 != nullptr) {
    int b = 0;  // the last sequence whose first full block is <= row
    for (int lo_b = 0, hi_b = B - 1; lo_b <= hi_b;) {
      const int mid_b = (lo_b + hi_b) / 2;
      if (block_offset[mid_b] <= row) {
        b = mid_b;
        lo_b = mid_b + 1;
      } else {
        hi_b = mid_b - 1;
      }
    }
    const int64_t j = row - block_offset[b];
    f32[((b * bps + j) * Hkv + kvh) * D + t] = m;
  }
}

// Is (s, j) ranked before (t, i)? Higher score first; equal scores: the more recent block.
__device__ __forceinline__ bool ranks_before(float s, int j, float t, int i) {
  return s > t || (s == t && j > i);
}

// Inserts (s, j) into a list sorted best first; fully unrolled so the list stays in
// registers. KM is the compiled list length (>= kp, the length in use).
template <int KM>
__device__ __forceinline__ void topk_insert(float (&val)[KM], int (&idx)[KM], int kp, float s,
                                            int j) {
#pragma unroll
  for (int i = 0; i < KM; ++i) {
    if (i < kp && ranks_before(s, j, val[i], idx[i])) {
      const float ts = val[i];
      const int tj = idx[i];
      val[i] = s;
      idx[i] = j;
      s = ts;
      j = tj;
    }
  }
}

// topk_insert for the scan, where j is larger than every index in the list (each thread
// visits its blocks in ascending order; empty slots hold index -1): (s, j) then ranks
// before (t, i) exactly when s >= t, and an entry pushed down ranks before the next one
// (the list is sorted), so one comparison per slot gives topk_insert's order, ties to the
// more recent block included (NaN never enters, as there). The list is kept to its full
// length KM: its first kp entries are the top kp all the same, and entries past kp never
// enter the merge's top kp (each ranks after the kp entries above it in its own list).
// `in` = false inserts nothing. Selects, not branches: those diverge within a warp.
template <int KM>
__device__ __forceinline__ void topk_push(float (&val)[KM], int (&idx)[KM], bool in,
                                          float s, int j) {
#pragma unroll
  for (int i = 0; i < KM; ++i) {
    const bool t = in & (s >= val[i]);
    const float ts = val[i];
    const int tj = idx[i];
    val[i] = t ? s : ts;
    idx[i] = t ? j : tj;
    s = t ? ts : s;
    j = t ? tj : j;
  }
}

// Past blocks per chunk: 32, and 16 at D 128 with K <= 5, where that lets three CTAs share
// an SM (61 KB each). Every score is the same sum in the same order whatever the chunk
// (the chunk only picks which columns a pass covers).
template <int D, int KM>
constexpr int gate_chunk_blocks() {
  return D == 128 && KM <= 4 ? 16 : 32;
}
// Q tile + two chunk buffers (3 terms each), padded rows: 45 KB at D 64, 61 KB at D 128
// with 16-block chunks, 85 KB with 32.
template <int D, int KM, int MT = 1>
constexpr int gate_smem_bytes() {
  return (kGateRows * MT + 2 * 3 * gate_chunk_blocks<D, KM>()) * (D + 8) * 2;
}
// CTAs per SM asked of ptxas (registers <= 65536 / (256 x this)): the most each instance
// reaches without spills (checked with ptxas -v), within what shared memory allows.
template <int D, int KM, int MT = 1>
constexpr int gate_min_ctas() {
  if (MT > 1) return 2;  // 96 KB (D 128) / 64.5 KB (D 64) of shared memory; 128 registers
  if (KM > 8) return 1;
  if (KM > 4) return 2;
  return D == 64 ? 4 : 3;
}

// One CTA scores 128 x MT query tokens of one head against every past block of their sequence
// (tensor cores, the means in chunks of NB blocks through shared memory), keeping per row
// a top-(K-1) list in registers: each thread sees two rows per m-tile and a quarter of the
// columns; the four lists of a row are merged by warp shuffles at the end. The (T, T/S)
// score matrix never exists in memory. The chunks are double-buffered: chunk c+1 is copied
// (cp.async) while chunk c is scored, and chunks 0 and 1 are both in flight with the Q tile.
template <int D, int KM, int MT>
__global__ void __launch_bounds__(kGateThreads, (gate_min_ctas<D, KM, MT>())) gate_mma_kernel(
    const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ msplit,
    const int32_t* __restrict__ cu_seqlens, const int32_t* __restrict__ block_offset, int Hq,
    int Hkv, int S, int K, int32_t* __restrict__ sel, int m_last, int pos0) {
  using namespace detail;
  static_assert(MT >= 1 && MT <= kGateMaxMt, "gate: 1 or 2 m-tiles per warp");
  constexpr int kRows = kGateRows * MT;  // query tokens per CTA
  constexpr int NB = gate_chunk_blocks<D, KM>();
  constexpr int LD = D + 8;          // padded rows: conflict-free ldmatrix
  constexpr int kBuf = 3 * NB * LD;  // one chunk: [3 terms][NB blocks][LD]
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __nv_bfloat16* sQ = reinterpret_cast<__nv_bfloat16*>(smem_raw);  // [kRows][LD]
  __nv_bfloat16* sM = sQ + kRows * LD;                              // [2][kBuf]
  // Grid (Hq, row tiles, B): heads fastest, last tiles (most past blocks) first. One launch
  // covers at most 65535 row tiles (gridDim.y's limit): tiles m_last, m_last - 1, ...
  const int b = blockIdx.z, h = blockIdx.x, m = m_last - static_cast<int>(blockIdx.y);
  const int seq_start = cu_seqlens[b], len = cu_seqlens[b + 1] - seq_start;
  if (m * kRows >= len) return;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, qd = lane % 4;
  const int kp = K - 1;
  const int last = min(len, (m + 1) * kRows) - 1;
  const int cmax = (pos0 + last) / S;  // the largest current block among the CTA's rows
  // The warp's m-tile t covers CTA rows (warp * MT + t) * 16 + [0, 16); this thread's rows
  // in it are g and g + 8 (x = 0, 1).
  int cur[MT][2];
#pragma unroll
  for (int t = 0; t < MT; ++t)
#pragma unroll
    for (int x = 0; x < 2; ++x)
      cur[t][x] = (pos0 + m * kRows + (warp * MT + t) * 16 + g + 8 * x) / S;
  float val[MT][2][KM];
  int idx[MT][2][KM];
#pragma unroll
  for (int t = 0; t < MT; ++t)
#pragma unroll
    for (int x = 0; x < 2; ++x)
#pragma unroll
      for (int i = 0; i < KM; ++i) {
        val[t][x][i] = -INFINITY;
        idx[t][x][i] = -1;
      }
  // Scores of row (t, x) are inserted for blocks j < lim[t][x]: its past blocks, none where
  // the row selects densely (current block <= K-1, below).
  int lim[MT][2];
#pragma unroll
  for (int t = 0; t < MT; ++t)
#pragma unroll
    for (int x = 0; x < 2; ++x) lim[t][x] = cur[t][x] > kp ? cur[t][x] : 0;
  // Scores only where some row of the CTA has a past block to choose (current block > K-1;
  // never with K = 1). The selections are all written at the end, from one address.
  if (cmax > kp && kp > 0) {
    const int kvh = h / (Hq / Hkv);
    load_rows<D, LD, kGateThreads>(sQ, kRows, q, [&](int r) -> const __nv_bfloat16* {
      const int p = m * kRows + r;
      return p < len ? q + (static_cast<size_t>(seq_start + p) * Hq + h) * D : nullptr;
    });
    // Chunk copies: thread tid moves the 16 bytes at column c8 of buffer rows r0 + k * kStep
    // (row = term * NB + block - j0), the same rows in every chunk, so each copy's term is a
    // compile-time constant and only the chunk's first block j0 moves the source. Blocks at
    // or past cmax are zero-filled (and never inserted); their source address is block 0's,
    // which exists (cmax > 0 here).
    constexpr int kStep = kGateThreads / (D / 8);  // buffer rows per pass: 32 (D 64), 16
    static_assert(NB % kStep == 0, "a pass must not straddle two terms");
    const int r0 = tid / (D / 8), c8 = (tid % (D / 8)) * 8;
    const int jstride = Hkv * 3 * D;  // elements between blocks j and j + 1
    const __nv_bfloat16* msrc =
        msplit + (static_cast<size_t>(block_offset[b]) * Hkv + kvh) * 3 * D + c8;
    auto load_chunk = [&](int buf, int j0) {
      __nv_bfloat16* dst = sM + buf * kBuf + r0 * LD + c8;
#pragma unroll
      for (int k = 0; k < 3 * NB / kStep; ++k) {
        const int part = k * kStep / NB, j = j0 + r0 + (k * kStep) % NB;
        const bool in = j < cmax;
        cp_async_16(dst + k * kStep * LD,
                    msrc + (in ? static_cast<int64_t>(j) * jstride + part * D : 0), in ? 16 : 0);
      }
    };
    const int nchunks = (cmax + NB - 1) / NB;
    load_chunk(0, 0);
    cp_async_commit();  // group: Q tile + chunk 0
    if (nchunks > 1) {
      load_chunk(1, NB);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();

    uint32_t qa[MT][D / 16][4];
#pragma unroll
    for (int t = 0; t < MT; ++t)
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk)
        ldmatrix_x4(qa[t][kk],
                    sQ + ((warp * MT + t) * 16 + lane % 16) * LD + kk * 16 + (lane / 16) * 8);

    for (int c = 0; c < nchunks; ++c) {
      if (c > 0) {
        cp_async_wait<0>();  // chunk c (the only group in flight)
        // Chunk c is visible to all, and every warp is done with chunk c-1, whose buffer
        // chunk c+1 now overwrites.
        __syncthreads();
        if (c + 1 < nchunks) {
          load_chunk((c + 1) & 1, (c + 1) * NB);
          cp_async_commit();
        }
      }
      const __nv_bfloat16* sB = sM + (c & 1) * kBuf;
      float acc[MT][NB / 8][4];
#pragma unroll
      for (int t = 0; t < MT; ++t)
#pragma unroll
        for (int i = 0; i < NB / 8; ++i)
          acc[t][i][0] = acc[t][i][1] = acc[t][i][2] = acc[t][i][3] = 0.f;
      // Each score is the same sum in the same order whatever MT (the m-tile only picks
      // which A fragment a product takes): MT = 2 selects exactly what MT = 1 does.
#pragma unroll
      for (int part = 2; part >= 0; --part)  // smallest term first
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk)
#pragma unroll
          for (int np = 0; np < NB / 16; ++np) {
            uint32_t bm[4];
            ldmatrix_x4(bm, sB + (part * NB + np * 16 + lane % 8 + (lane / 16) * 8) * LD +
                                kk * 16 + ((lane / 8) % 2) * 8);
#pragma unroll
            for (int t = 0; t < MT; ++t) {
              mma_bf16(acc[t][2 * np], qa[t][kk], bm[0], bm[1]);
              mma_bf16(acc[t][2 * np + 1], qa[t][kk], bm[2], bm[3]);
            }
          }
      const int j0 = c * NB + 2 * qd;
#pragma unroll
      for (int t = 0; t < MT; ++t)
#pragma unroll
        for (int nt = 0; nt < NB / 8; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int j = j0 + nt * 8 + (e & 1), x = e / 2;
            topk_push<KM>(val[t][x], idx[t][x], j < lim[t][x], acc[t][nt][e], j);
          }
    }
    // Merge the quad's four lists of each row: after the xor-1 and xor-2 exchanges every
    // thread of the quad holds the row's top-(K-1).
#pragma unroll
    for (int t = 0; t < MT; ++t)
#pragma unroll
      for (int x = 0; x < 2; ++x)
#pragma unroll
        for (int step = 1; step <= 2; step *= 2) {
          float ov[KM];
          int oi[KM];
#pragma unroll
          for (int i = 0; i < KM; ++i) {
            ov[i] = __shfl_xor_sync(0xffffffffu, val[t][x][i], step);
            oi[i] = __shfl_xor_sync(0xffffffffu, idx[t][x][i], step);
          }
#pragma unroll
          for (int i = 0; i < KM; ++i) topk_insert<KM>(val[t][x], idx[t][x], kp, ov[i], oi[i]);
        }
  }
  // Thread qd = x < 2 writes row x of each of its m-tiles.
  if (qd >= 2) return;
#pragma unroll
  for (int t = 0; t < MT; ++t) {
    const int my_pos = m * kRows + (warp * MT + t) * 16 + g + 8 * qd, my_cur = (pos0 + my_pos) / S;
    if (my_pos >= len) continue;
    int32_t* out = sel + (static_cast<size_t>(seq_start + my_pos) * Hq + h) * K;
    // Rows whose current block is <= K-1 select every block up to it (MoBA = dense there);
    // with K = 1 every row selects its current block alone.
    if (kp == 0) {
      out[0] = my_cur;
      continue;
    }
    if (my_cur <= kp) {
      for (int i = 0; i < K; ++i) out[i] = i <= my_cur ? i : -1;
      continue;
    }
    int ids[KM];
#pragma unroll
    for (int i = 0; i < KM; ++i)
      ids[i] = qd == 0 ? idx[t][0][i] : idx[t][1][i];  // not idx[t][qd]: registers
    // Slots: the K-1 winners in ascending block order, then the current block.
#pragma unroll
    for (int i = 1; i < KM; ++i)
#pragma unroll
      for (int j2 = i; j2 > 0; --j2)
        if (j2 < kp && ids[j2 - 1] > ids[j2]) {
          const int tmp = ids[j2];
          ids[j2] = ids[j2 - 1];
          ids[j2 - 1] = tmp;
        }
#pragma unroll
    for (int i = 0; i < KM; ++i)
      if (i < kp) out[i] = ids[i];
    out[kp] = my_cur;
  }
}

// gridDim.y's limit: the row tiles of one gate launch.
constexpr int64_t kMaxGridY = 65535;

// The gate over grid (Hq, row tiles of 128 x MT tokens, B), the row tiles in slices of at
// most kMaxGridY per launch (more only past 8M tokens in one sequence at MT = 1), the last
// tiles (most work) first.
template <int D, int KM, int MT>
void launch_gate(int64_t max_len, int Hq, int B, cudaStream_t stream, const bf16* q,
                 const bf16* msplit, const Plan& plan, int Hkv, int S, int K, int32_t* sel,
                 int pos0) {
  constexpr int smem = gate_smem_bytes<D, KM, MT>();
  constexpr auto kernel = gate_mma_kernel<D, KM, MT>;
  set_smem_once<kernel>(smem);
  const int64_t tiles = (max_len + kGateRows * MT - 1) / (kGateRows * MT);
  for (int64_t done = 0; done < tiles; done += kMaxGridY) {
    const unsigned slice = static_cast<unsigned>(std::min(kMaxGridY, tiles - done));
    const dim3 g(static_cast<unsigned>(Hq), slice, static_cast<unsigned>(B));
    kernel<<<g, kGateThreads, smem, stream>>>(q, msplit, plan.dev().cu_seqlens,
                                              plan.dev().block_offset, Hq, Hkv, S, K, sel,
                                              static_cast<int>(tiles - 1 - done), pos0);
    CUDA_CHECK_LAUNCH();
  }
}

// MOBA_GATE_ROWS, read on every call: unset, empty or `auto` = gate_rows_auto (attention/
// gate.h: 256 rows a CTA on large grids, 128 on small ones); 128 or 256 = that (256 only
// where the list length has that instance, K <= 5); anything else is an error naming the
// value.
bool gate_two_mtiles(int64_t max_len, int Hq, int B, int K) {
  switch (env_choice("MOBA_GATE_ROWS", {"auto", "128", "256"})) {
    case 1: return false;
    case 2: return true;
    default: return gate_rows_auto(max_len, Hq, B, K) == 256;
  }
}

// One list length: MT 2 where asked for and it has that instance (KM <= 4), else MT 1.
template <int D, int KM>
void launch_gate_km(bool mt2, int64_t max_len, int Hq, int B, cudaStream_t stream, const bf16* q,
                    const bf16* msplit, const Plan& plan, int Hkv, int S, int K, int32_t* sel,
                    int pos0) {
  if constexpr (KM <= 4)
    if (mt2)
      return launch_gate<D, KM, 2>(max_len, Hq, B, stream, q, msplit, plan, Hkv, S, K, sel, pos0);
  launch_gate<D, KM, 1>(max_len, Hq, B, stream, q, msplit, plan, Hkv, S, K, sel, pos0);
}

template <int D>
void launch_gate_d(int64_t max_len, int Hq, int B, cudaStream_t stream, const bf16* q,
                   const bf16* msplit, const Plan& plan, int Hkv, int S, int K, int32_t* sel,
                   int pos0) {
  // The list length is compiled in buckets so that K = 3 keeps two registers per row.
  const int kp = K - 1;
  const bool mt2 = gate_two_mtiles(max_len, Hq, B, K);
  auto go = [&](auto km) {
    launch_gate_km<D, decltype(km)::value>(mt2, max_len, Hq, B, stream, q, msplit, plan, Hkv, S,
                                           K, sel, pos0);
  };
  if (kp <= 2) go(std::integral_constant<int, 2>{});
  else if (kp <= 4) go(std::integral_constant<int, 4>{});
  else if (kp <= 8) go(std::integral_constant<int, 8>{});
  else go(std::integral_constant<int, kMaxPast>{});
}

// The scores and top-k of the plan's queries against the split means `msplit` (rows of
// (blocks, Hkv, 3, D) from block_offset[b] for sequence b), query positions shifted by pos0.
void launch_scores(const Plan& plan, const bf16* q, const bf16* msplit, int32_t* sel,
                   int64_t pos0, cudaStream_t stream) {
  const Layout& l = plan.layout();
  const int S = static_cast<int>(plan.config().block_size), K = static_cast<int>(plan.config().top_k);
  const int Hq = static_cast<int>(l.num_q_heads), Hkv = static_cast<int>(l.num_kv_heads);
  const int B = static_cast<int>(l.batch());
  const int64_t max_len = plan.max_seq_len();
  const int p0 = static_cast<int>(pos0);
  if (l.head_dim == 64) launch_gate_d<64>(max_len, Hq, B, stream, q, msplit, plan, Hkv, S, K, sel, p0);
  else launch_gate_d<128>(max_len, Hq, B, stream, q, msplit, plan, Hkv, S, K, sel, p0);
}

// Block means of k into the plan's scratch, split in three bf16 terms: (full blocks, Hkv, 3,
// D); the fp32 means too where means_out is given (attention_cuda.h, moba_gate).
bf16* launch_means(Plan& plan, const bf16* k, cudaStream_t stream, float* means_out,
                   int64_t blocks_per_seq) {
  const Layout& l = plan.layout();
  const int S = static_cast<int>(plan.config().block_size), K = static_cast<int>(plan.config().top_k);
  const int Hkv = static_cast<int>(l.num_kv_heads), D = static_cast<int>(l.head_dim);
  const int B = static_cast<int>(l.batch());
  const int rows = static_cast<int>(plan.full_blocks());
  bf16* msplit = static_cast<bf16*>(
      plan.scratch(kSlotMeans, sizeof(bf16) * 3 * std::max<int64_t>(1, rows) * Hkv * D));
  if (rows > 0 && K > 1) {
    block_means_kernel<<<dim3(rows, Hkv), kBlockMeanThreads, 0, stream>>>(
        k, plan.dev().block_start, S, Hkv, D, msplit, means_out, plan.dev().block_offset, B,
        blocks_per_seq);
    CUDA_CHECK_LAUNCH();
  }
  mark_phase("gate_means", stream);
  return msplit;
}

}  // namespace

bool gate_launch(Plan& plan, const bf16* q, const bf16* k, int32_t* sel, cudaStream_t stream,
                 float* means_out, int64_t blocks_per_seq) {
  const int K = static_cast<int>(plan.config().top_k);
  const bf16* msplit = launch_means(plan, k, stream, means_out, blocks_per_seq);
  launch_scores(plan, q, msplit, sel, 0, stream);
  mark_phase("gate_scores_topk", stream);
  return K > 1;  // every full block's mean (none when there is no full block)
}

namespace {
// Context parallel's shard: one sequence of whole blocks (docs/distributed.md).
void check_shard(const Plan& plan, const char* what) {
  const Layout& l = plan.layout();
  const int64_t S = plan.config().block_size;
  MOBA_CHECK(l.batch() == 1, what, ": a context-parallel shard is one sequence, got ", l.batch());
  MOBA_CHECK(l.tokens() % S == 0, what, ": the shard's ", l.tokens(),
             " tokens are not a whole number of MoBA blocks of S = ", S);
}
}  // namespace

const bf16* gate_shard_means(Plan& plan, const bf16* k, cudaStream_t stream) {
  check_shard(plan, "moba_gate_shard_means");
  return launch_means(plan, k, stream, nullptr, 0);
}

void gate_shard_launch(const Plan& plan, const bf16* q, const bf16* msplit_all, int64_t pos0,
                       int32_t* sel, cudaStream_t stream) {
  check_shard(plan, "moba_gate_shard");
  const int64_t S = plan.config().block_size, T = plan.layout().tokens();
  MOBA_CHECK(pos0 >= 0 && pos0 % S == 0, "moba_gate_shard: the shard's first position ", pos0,
             " is not a non-negative multiple of S = ", S);
  MOBA_CHECK(pos0 + T <= std::numeric_limits<int32_t>::max(), "moba_gate_shard: positions up to ",
             pos0 + T, " do not fit int32");
  launch_scores(plan, q, msplit_all, sel, pos0, stream);
  mark_phase("gate_scores_topk", stream);
}

}  // namespace moba::attn::cuda
