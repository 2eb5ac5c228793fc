// The MoBA gate and the gather lists on the device.
//
// Gate: block means of K in fp32 (accumulated in double, as the CPU gate does, so both
// round the same value), then per (token, query head) the score of every past full block
// in fp32 and a running top-(K-1) with ties to the more recent block. The (T, T/S) score
// matrix is never stored: each thread scores a quarter of the blocks of one token and
// keeps its best K-1 in registers; the four lists are merged through shared memory.
//
// Gather lists: from a selection, the entries (token, query head, slot) that chose each
// (full block, kv head) bucket, by a counting sort (count, scan, fill), plus the forward's
// work list of tiles of at most `tile_rows` entries of one bucket.
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>

#include "attention/cuda/attention_cuda.h"
#include "attention/cuda/internal.h"
#include "core/cuda_check.cuh"

namespace moba::attn::cuda {
namespace {

constexpr int kGateRows = 64;    // tokens per gate CTA (S >= 64: one current block)
constexpr int kGateSplit = 4;    // threads per token, each scoring every 4th block
constexpr int kMaxPast = kMaxTopK - 1;

// means (rows, Hkv, D) = mean over the S keys of each full block.
__global__ void block_means_kernel(const __nv_bfloat16* __restrict__ k,
                                   const int32_t* __restrict__ block_start, int S, int Hkv,
                                   int D, float* __restrict__ means) {
  const int row = blockIdx.x, kvh = blockIdx.y;
  const __nv_bfloat16* base = k + (static_cast<size_t>(block_start[row]) * Hkv + kvh) * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    double acc = 0.0;
#pragma unroll 8
    for (int s = 0; s < S; ++s) acc += static_cast<double>(__bfloat162float(base[static_cast<size_t>(s) * Hkv * D + d]));
    means[(static_cast<size_t>(row) * Hkv + kvh) * D + d] = static_cast<float>(acc / S);
  }
}

// Is (s, j) ranked before (t, i)? Higher score first; equal scores: the more recent block.
__device__ __forceinline__ bool ranks_before(float s, int j, float t, int i) {
  return s > t || (s == t && j > i);
}

// Inserts (s, j) into a list sorted best first; fully unrolled so the list stays in registers.
__device__ __forceinline__ void topk_insert(float (&val)[kMaxPast], int (&idx)[kMaxPast], int kp,
                                            float s, int j) {
#pragma unroll
  for (int i = 0; i < kMaxPast; ++i) {
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

template <int D>
__global__ void __launch_bounds__(kGateRows * kGateSplit) gate_select_kernel(
    const __nv_bfloat16* __restrict__ q, const float* __restrict__ means,
    const int32_t* __restrict__ cu_seqlens, const int32_t* __restrict__ block_offset, int Hq,
    int Hkv, int S, int K, int32_t* __restrict__ sel) {
  __shared__ float s_val[kGateRows][kGateSplit][kMaxPast];
  __shared__ int s_idx[kGateRows][kGateSplit][kMaxPast];
  const int b = blockIdx.z, h = blockIdx.y, m = blockIdx.x;
  const int seq_start = cu_seqlens[b], len = cu_seqlens[b + 1] - seq_start;
  if (m * kGateRows >= len) return;
  const int r = threadIdx.x / kGateSplit, sub = threadIdx.x % kGateSplit;
  const int pos = m * kGateRows + r;
  const bool valid = pos < len;
  const int c = m * kGateRows / S;  // the tile's current block
  const int kp = K - 1;
  int32_t* out = sel + (static_cast<size_t>(seq_start + pos) * Hq + h) * K;
  if (c <= kp) {  // every past block is selected: MoBA equals dense causal here
    if (valid && sub == 0)
      for (int i = 0; i < K; ++i) out[i] = i <= c ? i : -1;
    return;
  }
  const int kvh = h / (Hq / Hkv);
  float qr[D];
  {
    const uint4* src = reinterpret_cast<const uint4*>(q + (static_cast<size_t>(seq_start + (valid ? pos : 0)) * Hq + h) * D);
#pragma unroll
    for (int i = 0; i < D / 8; ++i) {
      const uint4 u = src[i];
      const __nv_bfloat162* v2 = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float2 f = __bfloat1622float2(v2[e]);
        qr[8 * i + 2 * e] = f.x;
        qr[8 * i + 2 * e + 1] = f.y;
      }
    }
  }
  float val[kMaxPast];
  int idx[kMaxPast];
#pragma unroll
  for (int i = 0; i < kMaxPast; ++i) {
    val[i] = -INFINITY;
    idx[i] = -1;
  }
  const float* mbase = means + (static_cast<size_t>(block_offset[b]) * Hkv + kvh) * D;
  for (int j = sub; j < c; j += kGateSplit) {
    const float4* mrow = reinterpret_cast<const float4*>(mbase + static_cast<size_t>(j) * Hkv * D);
    float acc0 = 0.f, acc1 = 0.f;  // two chains: more FMAs in flight
#pragma unroll
    for (int d4 = 0; d4 < D / 4; d4 += 2) {
      const float4 a = __ldg(mrow + d4), bb = __ldg(mrow + d4 + 1);
      acc0 = fmaf(qr[4 * d4], a.x, acc0);
      acc0 = fmaf(qr[4 * d4 + 1], a.y, acc0);
      acc0 = fmaf(qr[4 * d4 + 2], a.z, acc0);
      acc0 = fmaf(qr[4 * d4 + 3], a.w, acc0);
      acc1 = fmaf(qr[4 * d4 + 4], bb.x, acc1);
      acc1 = fmaf(qr[4 * d4 + 5], bb.y, acc1);
      acc1 = fmaf(qr[4 * d4 + 6], bb.z, acc1);
      acc1 = fmaf(qr[4 * d4 + 7], bb.w, acc1);
    }
    topk_insert(val, idx, kp, acc0 + acc1, j);
  }
#pragma unroll
  for (int i = 0; i < kMaxPast; ++i) {
    s_val[r][sub][i] = val[i];
    s_idx[r][sub][i] = idx[i];
  }
  __syncthreads();
  if (!valid || sub != 0) return;
  for (int o = 1; o < kGateSplit; ++o)
    for (int i = 0; i < kp; ++i) topk_insert(val, idx, kp, s_val[r][o][i], s_idx[r][o][i]);
  // Slots: the K-1 winners in ascending block order, then the current block.
  int ids[kMaxPast];
#pragma unroll
  for (int i = 0; i < kMaxPast; ++i) ids[i] = idx[i];
  for (int i = 1; i < kp; ++i)
    for (int j2 = i; j2 > 0 && ids[j2 - 1] > ids[j2]; --j2) {
      const int t = ids[j2];
      ids[j2] = ids[j2 - 1];
      ids[j2 - 1] = t;
    }
  for (int i = 0; i < kp; ++i) out[i] = ids[i];
  out[kp] = c;
}

// Sequence of a packed token (binary search over cu_seqlens).
__device__ __forceinline__ int seq_of(const int32_t* cu, int B, int tok) {
  int lo = 0, hi = B - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (cu[mid] <= tok) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// FILL = false: count entries per bucket; true: place each entry at its bucket's cursor.
template <bool FILL>
__global__ void bucket_kernel(const int32_t* __restrict__ sel, const int32_t* __restrict__ cu,
                              const int32_t* __restrict__ block_offset, int B, int N, int Hq,
                              int Hkv, int S, int K, int32_t* __restrict__ counts,
                              int32_t* __restrict__ entries) {
  const int kp = K - 1;
  const int64_t total = static_cast<int64_t>(N) * Hq * kp;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int row = static_cast<int>(e / kp), slot = static_cast<int>(e % kp);
    const int j = sel[static_cast<size_t>(row) * K + slot];
    if (j < 0) continue;
    const int tok = row / Hq, h = row % Hq;
    const int b = seq_of(cu, B, tok);
    if (j >= (tok - cu[b]) / S) continue;  // the current block, not a past one
    const int bucket = (block_offset[b] + j) * Hkv + h / (Hq / Hkv);
    const int at = atomicAdd(&counts[bucket], 1);
    if (FILL) entries[at] = static_cast<int32_t>(e);
  }
}

// One CTA: offsets = exclusive scan of counts, cursors = offsets, and the tile list.
__global__ void __launch_bounds__(1024) bucket_scan_kernel(
    int32_t* __restrict__ counts, int num_buckets, int Hkv, int tile_rows,
    const int32_t* __restrict__ block_start, int32_t* __restrict__ offsets,
    int4* __restrict__ tiles, int32_t* __restrict__ num_tiles) {
  __shared__ int s_e[1024], s_t[1024];
  const int tid = threadIdx.x;
  const int per = (num_buckets + 1023) / 1024;
  const int lo = min(num_buckets, tid * per), hi = min(num_buckets, lo + per);
  int e = 0, t = 0;
  for (int i = lo; i < hi; ++i) {
    e += counts[i];
    t += (counts[i] + tile_rows - 1) / tile_rows;
  }
  s_e[tid] = e;
  s_t[tid] = t;
  __syncthreads();
  for (int step = 1; step < 1024; step *= 2) {  // inclusive Hillis-Steele scan
    const int ae = tid >= step ? s_e[tid - step] : 0, at = tid >= step ? s_t[tid - step] : 0;
    __syncthreads();
    s_e[tid] += ae;
    s_t[tid] += at;
    __syncthreads();
  }
  e = s_e[tid] - e;
  t = s_t[tid] - t;
  for (int i = lo; i < hi; ++i) {
    const int cnt = counts[i];
    offsets[i] = e;
    for (int x = 0; x < cnt; x += tile_rows)
      tiles[t++] = make_int4(block_start[i / Hkv], e + x, min(tile_rows, cnt - x), i % Hkv);
    counts[i] = e;  // becomes the fill cursor
    e += cnt;
  }
  if (tid == 1023) {
    offsets[num_buckets] = s_e[1023];
    *num_tiles = s_t[1023];
  }
}

}  // namespace

void gate_launch(Plan& plan, const bf16* q, const bf16* k, int32_t* sel, cudaStream_t stream) {
  const Layout& l = plan.layout();
  const int S = static_cast<int>(plan.config().block_size), K = static_cast<int>(plan.config().top_k);
  const int Hq = static_cast<int>(l.num_q_heads), Hkv = static_cast<int>(l.num_kv_heads);
  const int D = static_cast<int>(l.head_dim), B = static_cast<int>(l.batch());
  const int rows = static_cast<int>(plan.full_blocks());
  float* means = static_cast<float*>(
      plan.scratch(kSlotMeans, sizeof(float) * std::max<int64_t>(1, rows) * Hkv * D));
  if (rows > 0) {
    block_means_kernel<<<dim3(rows, Hkv), D, 0, stream>>>(k, plan.dev().block_start, S, Hkv, D, means);
    CUDA_CHECK_LAUNCH();
  }
  const dim3 grid(static_cast<unsigned>((plan.max_seq_len() + kGateRows - 1) / kGateRows), Hq, B);
  const int threads = kGateRows * kGateSplit;
  if (D == 64)
    gate_select_kernel<64><<<grid, threads, 0, stream>>>(q, means, plan.dev().cu_seqlens,
                                                         plan.dev().block_offset, Hq, Hkv, S, K, sel);
  else
    gate_select_kernel<128><<<grid, threads, 0, stream>>>(q, means, plan.dev().cu_seqlens,
                                                          plan.dev().block_offset, Hq, Hkv, S, K, sel);
  CUDA_CHECK_LAUNCH();
}

GatherIndex build_gather_index(Plan& plan, const int32_t* sel, int tile_rows, cudaStream_t stream) {
  const Layout& l = plan.layout();
  const int S = static_cast<int>(plan.config().block_size), K = static_cast<int>(plan.config().top_k);
  const int Hq = static_cast<int>(l.num_q_heads), Hkv = static_cast<int>(l.num_kv_heads);
  const int N = static_cast<int>(l.tokens()), B = static_cast<int>(l.batch());
  const int kp = K - 1;
  const int buckets = static_cast<int>(plan.full_blocks()) * Hkv;
  GatherIndex ix;
  const int64_t max_entries = static_cast<int64_t>(N) * Hq * kp;
  ix.max_tiles = max_entries / tile_rows + buckets + 1;
  ix.counts = static_cast<int32_t*>(plan.scratch(kSlotCounts, sizeof(int32_t) * (buckets + 1)));
  ix.offsets = static_cast<int32_t*>(plan.scratch(kSlotOffsets, sizeof(int32_t) * (buckets + 1)));
  ix.entries = static_cast<int32_t*>(
      plan.scratch(kSlotEntries, sizeof(int32_t) * std::max<int64_t>(1, max_entries)));
  ix.tiles = static_cast<int4*>(plan.scratch(kSlotTiles, sizeof(int4) * ix.max_tiles));
  ix.num_tiles = static_cast<int32_t*>(plan.scratch(kSlotNumTiles, sizeof(int32_t)));
  CUDA_CHECK(cudaMemsetAsync(ix.counts, 0, sizeof(int32_t) * (buckets + 1), stream));
  CUDA_CHECK(cudaMemsetAsync(ix.num_tiles, 0, sizeof(int32_t), stream));
  if (kp == 0 || buckets == 0) {
    CUDA_CHECK(cudaMemsetAsync(ix.offsets, 0, sizeof(int32_t) * (buckets + 1), stream));
    return ix;
  }
  const int threads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>((max_entries + threads - 1) / threads, 4096));
  bucket_kernel<false><<<blocks, threads, 0, stream>>>(sel, plan.dev().cu_seqlens,
                                                       plan.dev().block_offset, B, N, Hq, Hkv, S,
                                                       K, ix.counts, nullptr);
  CUDA_CHECK_LAUNCH();
  bucket_scan_kernel<<<1, 1024, 0, stream>>>(ix.counts, buckets, Hkv, tile_rows,
                                             plan.dev().block_start, ix.offsets, ix.tiles,
                                             ix.num_tiles);
  CUDA_CHECK_LAUNCH();
  bucket_kernel<true><<<blocks, threads, 0, stream>>>(sel, plan.dev().cu_seqlens,
                                                      plan.dev().block_offset, B, N, Hq, Hkv, S,
                                                      K, ix.counts, ix.entries);
  CUDA_CHECK_LAUNCH();
  return ix;
}

}  // namespace moba::attn::cuda
