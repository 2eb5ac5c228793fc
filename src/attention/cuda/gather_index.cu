// Gather lists of MoBA on the device: from a selection, the entries (token, query head,
// slot) that chose each (full block, kv head) bucket, by a counting sort (count, scan,
// fill), plus the forward's work list of tiles of at most `tile_rows` entries of one bucket.
// Entry order inside a bucket depends on atomics: per-entry results do not (each row is
// computed alone); dK/dV sums may differ in the last bit between runs.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "attention/cuda/attention_cuda.h"
#include "attention/cuda/internal.h"
#include "core/cuda_check.cuh"

namespace moba::attn::cuda {
namespace {

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
// The entries of query tokens [tok0, tok1).
template <bool FILL>
__global__ void bucket_kernel(const int32_t* __restrict__ sel, const int32_t* __restrict__ cu,
                              const int32_t* __restrict__ block_offset, int B, int tok0, int tok1,
                              int Hq, int Hkv, int S, int K, int32_t* __restrict__ counts,
                              int32_t* __restrict__ entries) {
  const int kp = K - 1;
  const int64_t total = static_cast<int64_t>(tok1) * Hq * kp;
  for (int64_t e = static_cast<int64_t>(tok0) * Hq * kp +
                   blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       e < total;
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

// The same counting sort with the counts first gathered in shared memory: a CTA takes
// kIndexTokens tokens of one query head, so all its entries fall in the buckets of one kv
// head, one bin per full block (`rows` bins). Global atomics drop from one per entry to one
// per (CTA, non-empty bin): the buckets of early blocks receive thousands of entries, and
// same-address global atomics serialise. The CTAs cover query tokens [tok0, tok1).
constexpr int kIndexTokens = 2048;

template <bool FILL>
__global__ void bucket_smem_kernel(const int32_t* __restrict__ sel, const int32_t* __restrict__ cu,
                                   const int32_t* __restrict__ block_offset, int B, int tok0,
                                   int tok1, int Hq, int Hkv, int S, int K, int rows,
                                   int32_t* __restrict__ counts, int32_t* __restrict__ entries) {
  extern __shared__ int bins[];  // (rows)
  const int h = blockIdx.y, kvh = h / (Hq / Hkv), kp = K - 1;
  for (int i = threadIdx.x; i < rows; i += blockDim.x) bins[i] = 0;
  __syncthreads();
  const int64_t e0 = (tok0 + static_cast<int64_t>(blockIdx.x) * kIndexTokens) * kp;
  const int64_t e1 = min(static_cast<int64_t>(tok1) * kp, e0 + static_cast<int64_t>(kIndexTokens) * kp);
  // Pass over the CTA's (token, slot) pairs; returns the row (full block) or -1.
  auto row_of = [&](int64_t i) {
    const int tok = static_cast<int>(i / kp), slot = static_cast<int>(i % kp);
    const int j = sel[(static_cast<size_t>(tok) * Hq + h) * K + slot];
    if (j < 0) return -1;
    const int b = seq_of(cu, B, tok);
    if (j >= (tok - cu[b]) / S) return -1;  // the current block, not a past one
    return block_offset[b] + j;
  };
  for (int64_t i = e0 + threadIdx.x; i < e1; i += blockDim.x) {
    const int row = row_of(i);
    if (row >= 0) atomicAdd(&bins[row], 1);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < rows; i += blockDim.x) {
    const int n = bins[i];
    if (n == 0) continue;
    const int base = atomicAdd(&counts[i * Hkv + kvh], n);  // FILL: counts are the cursors
    if (FILL) bins[i] = base;
  }
  if (!FILL) return;
  __syncthreads();
  for (int64_t i = e0 + threadIdx.x; i < e1; i += blockDim.x) {
    const int row = row_of(i);
    if (row < 0) continue;
    const int at = atomicAdd(&bins[row], 1);
    const int tok = static_cast<int>(i / kp), slot = static_cast<int>(i % kp);
    entries[at] = (tok * Hq + h) * kp + slot;
  }
}

constexpr int kMaxSmemBins = 32768;  // 128 KB

}  // namespace

GatherIndex build_gather_index(Plan& plan, const int32_t* sel, int tile_rows, cudaStream_t stream,
                               int64_t tok0, int64_t tok1, int64_t size_tokens) {
  const Layout& l = plan.layout();
  if (tok1 < 0) tok1 = l.tokens();
  if (size_tokens < 0) size_tokens = l.tokens();
  MOBA_CHECK(0 <= tok0 && tok0 <= tok1 && tok1 <= l.tokens() && tok1 - tok0 <= size_tokens,
             "build_gather_index: query tokens [", tok0, ", ", tok1, ") of ", l.tokens(),
             " with scratch for ", size_tokens);
  // Entries (token * Hq + head) * (K - 1) + slot and the bucket offsets are int32 (the
  // plan checked the dense sizes; this is MoBA's own limit).
  check_cuda_sizes(l, &plan.config());
  const int S = static_cast<int>(plan.config().block_size), K = static_cast<int>(plan.config().top_k);
  const int Hq = static_cast<int>(l.num_q_heads), Hkv = static_cast<int>(l.num_kv_heads);
  const int B = static_cast<int>(l.batch());
  const int kp = K - 1;
  const int buckets = static_cast<int>(plan.full_blocks()) * Hkv;
  GatherIndex ix;
  // Scratch for size_tokens query tokens (the longest chunk: every chunk's index fits the
  // same buffers); the work list of this one's.
  const int64_t max_entries = (tok1 - tok0) * Hq * kp;
  const int64_t size_entries = size_tokens * Hq * kp;
  ix.max_tiles = max_entries / tile_rows + buckets + 1;
  ix.counts = static_cast<int32_t*>(plan.scratch(kSlotCounts, sizeof(int32_t) * (buckets + 1)));
  ix.offsets = static_cast<int32_t*>(plan.scratch(kSlotOffsets, sizeof(int32_t) * (buckets + 1)));
  ix.entries = static_cast<int32_t*>(
      plan.scratch(kSlotEntries, sizeof(int32_t) * std::max<int64_t>(1, size_entries)));
  ix.tiles = static_cast<int4*>(
      plan.scratch(kSlotTiles, sizeof(int4) * (size_entries / tile_rows + buckets + 1)));
  ix.num_tiles = static_cast<int32_t*>(plan.scratch(kSlotNumTiles, sizeof(int32_t)));
  CUDA_CHECK(cudaMemsetAsync(ix.counts, 0, sizeof(int32_t) * (buckets + 1), stream));
  CUDA_CHECK(cudaMemsetAsync(ix.num_tiles, 0, sizeof(int32_t), stream));
  if (kp == 0 || buckets == 0 || tok1 == tok0) {
    CUDA_CHECK(cudaMemsetAsync(ix.offsets, 0, sizeof(int32_t) * (buckets + 1), stream));
    return ix;
  }
  const int threads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>((max_entries + threads - 1) / threads, 4096));
  const int rows = static_cast<int>(plan.full_blocks());
  // Shared-memory bins while one int per full block fits comfortably; else global atomics.
  const bool smem_bins = rows <= kMaxSmemBins;
  const int t0 = static_cast<int>(tok0), t1 = static_cast<int>(tok1);
  const dim3 sgrid(static_cast<unsigned>((t1 - t0 + kIndexTokens - 1) / kIndexTokens), Hq);
  const size_t sbytes = sizeof(int) * rows;
  if (smem_bins) {
    set_smem_once<bucket_smem_kernel<false>>(4 * kMaxSmemBins);
    set_smem_once<bucket_smem_kernel<true>>(4 * kMaxSmemBins);
    bucket_smem_kernel<false><<<sgrid, threads, sbytes, stream>>>(
        sel, plan.dev().cu_seqlens, plan.dev().block_offset, B, t0, t1, Hq, Hkv, S, K, rows,
        ix.counts, nullptr);
  } else {
    bucket_kernel<false><<<blocks, threads, 0, stream>>>(sel, plan.dev().cu_seqlens,
                                                         plan.dev().block_offset, B, t0, t1, Hq,
                                                         Hkv, S, K, ix.counts, nullptr);
  }
  CUDA_CHECK_LAUNCH();
  bucket_scan_kernel<<<1, 1024, 0, stream>>>(ix.counts, buckets, Hkv, tile_rows,
                                             plan.dev().block_start, ix.offsets, ix.tiles,
                                             ix.num_tiles);
  CUDA_CHECK_LAUNCH();
  if (smem_bins)
    bucket_smem_kernel<true><<<sgrid, threads, sbytes, stream>>>(
        sel, plan.dev().cu_seqlens, plan.dev().block_offset, B, t0, t1, Hq, Hkv, S, K, rows,
        ix.counts, ix.entries);
  else
    bucket_kernel<true><<<blocks, threads, 0, stream>>>(sel, plan.dev().cu_seqlens,
                                                        plan.dev().block_offset, B, t0, t1, Hq, Hkv,
                                                        S, K, ix.counts, ix.entries);
  CUDA_CHECK_LAUNCH();
  mark_phase("gather_index", stream);
  return ix;
}

}  // namespace moba::attn::cuda
