// Gather lists of MoBA on the device: from a selection, the entries (token, query head,
// slot) that chose each bucket, by a counting sort (count, scan, fill), plus the forward's
// work list of tiles of at most `tile_rows` entries of one bucket. A bucket is (chunk, full
// block, kv head), chunk-major, for the chunked forward's chunks (attention/fwd_chunks.h;
// one chunk unchunked): one index for all chunks (docs/kernel_notes.md, "v18"). Entry order
// inside a bucket depends on atomics: per-entry results do not (each row is computed
// alone); dK/dV sums may differ in the last bit between runs.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "attention/cuda/attention_cuda.h"
#include "attention/cuda/internal.h"
#include "attention/fwd_chunks.h"
#include "core/cuda_check.cuh"
#include "core/env_choice.h"
#include "core/error.h"

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

// The CTA pieces of the chunked index (Plan::index_pieces): n + 1 int2 {first token,
// chunk}, piece i = tokens [pieces[i].x, pieces[i + 1].x) of chunk pieces[i].y; null = one
// chunk. The chunk of a packed token: that of the last piece starting at or before it.
__device__ __forceinline__ int chunk_of(const int2* pieces, int n, int tok) {
  if (pieces == nullptr) return 0;
  int lo = 0, hi = n - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (pieces[mid].x <= tok) lo = mid; else hi = mid - 1;
  }
  return pieces[lo].y;
}

// FILL = false: count entries per bucket; true: place each entry at its bucket's cursor.
// Every entry of the batch, one global atomic each; bucket = chunk x buckets + (full block
// x Hkv + kv head).
template <bool FILL>
__global__ void bucket_kernel(const int32_t* __restrict__ sel, const int32_t* __restrict__ cu,
                              const int32_t* __restrict__ block_offset, int B, int N,
                              const int2* __restrict__ pieces, int n_pieces, int Hq, int Hkv,
                              int S, int K, int buckets, int32_t* __restrict__ counts,
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
    const int bucket = chunk_of(pieces, n_pieces, tok) * buckets +
                       (block_offset[b] + j) * Hkv + h / (Hq / Hkv);
    const int at = atomicAdd(&counts[bucket], 1);
    if (FILL) entries[at] = static_cast<int32_t>(e);
  }
}

// The scan over all chunks' buckets (docs/kernel_notes.md, "v19"): offsets = the exclusive
// scan of counts, cursors = offsets, the tile list (in bucket order, so chunk by chunk) and
// chunk_tiles: each chunk's first tile (written by the thread holding the chunk's first
// bucket), then the total. kIndexScanBuckets buckets per CTA, kScanItems consecutive ones
// per thread. One CTA when the buckets fit (the single pass: full blocks x kv heads);
// beyond, bucket_scan_sums_kernel first writes each CTA's (entries, tiles) sums after
// chunk_tiles' chunks + 1 int32, and each CTA of bucket_scan_kernel adds those of the CTAs
// before it. (v18 ran all of it on one CTA: at 128K with chunks of 4096, 131072 buckets of
// 128 a thread, its strided loads and stores took ~0.6 ms.)
constexpr int kScanThreads = 1024;
constexpr int kScanItems = static_cast<int>(kIndexScanBuckets / kScanThreads);
static_assert(kScanItems * kScanThreads == kIndexScanBuckets, "a CTA's buckets");

__device__ __forceinline__ int tiles_of(int cnt, int tile_rows) {
  return (cnt + tile_rows - 1) / tile_rows;
}

// Inclusive scan of x over the warp's lanes (lane order).
__device__ __forceinline__ int2 warp_inclusive_scan(int2 x) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int d = 1; d < 32; d *= 2) {
    const int ye = __shfl_up_sync(0xffffffffu, x.x, d), yt = __shfl_up_sync(0xffffffffu, x.y, d);
    if (lane >= d) {
      x.x += ye;
      x.y += yt;
    }
  }
  return x;
}

// Exclusive scan of v (entries, tiles) over the CTA's threads in thread order; *total gets
// the CTA's sum. Every thread must call it; it may be called again after a __syncthreads.
__device__ __forceinline__ int2 cta_exclusive_scan(int2 v, int2* total) {
  __shared__ int2 warp_sums[kScanThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int2 x = warp_inclusive_scan(v);
  if (lane == 31) warp_sums[warp] = x;
  __syncthreads();
  if (warp == 0) warp_sums[lane] = warp_inclusive_scan(warp_sums[lane]);  // 32 warps
  __syncthreads();
  const int2 before = warp > 0 ? warp_sums[warp - 1] : make_int2(0, 0);
  *total = warp_sums[kScanThreads / 32 - 1];
  return make_int2(before.x + x.x - v.x, before.y + x.y - v.y);
}
static_assert(kScanThreads == 32 * 32, "cta_exclusive_scan: one warp scans the warp sums");

// The thread's buckets [lo, hi) of CTA blockIdx.x, their counts, and sum = (entries, tiles)
// over them.
struct ScanItems {
  int lo, hi;
  int cnt[kScanItems];
  int2 sum;
};
__device__ __forceinline__ ScanItems scan_items(const int32_t* counts, int num_buckets,
                                                int tile_rows) {
  ScanItems it;
  it.lo = static_cast<int>(min(static_cast<int64_t>(num_buckets),
                              static_cast<int64_t>(blockIdx.x) * kIndexScanBuckets +
                                  static_cast<int64_t>(threadIdx.x) * kScanItems));
  it.hi = min(num_buckets, it.lo + kScanItems);
#pragma unroll
  for (int k = 0; k < kScanItems; ++k) it.cnt[k] = it.lo + k < it.hi ? counts[it.lo + k] : 0;
  it.sum = make_int2(0, 0);
#pragma unroll
  for (int k = 0; k < kScanItems; ++k) {
    it.sum.x += it.cnt[k];
    it.sum.y += tiles_of(it.cnt[k], tile_rows);
  }
  return it;
}

__global__ void __launch_bounds__(kScanThreads)
    bucket_scan_sums_kernel(const int32_t* __restrict__ counts, int num_buckets, int tile_rows,
                            int32_t* __restrict__ sums) {
  const ScanItems it = scan_items(counts, num_buckets, tile_rows);
  int2 total;
  cta_exclusive_scan(it.sum, &total);
  if (threadIdx.x == 0) {
    sums[2 * blockIdx.x] = total.x;
    sums[2 * blockIdx.x + 1] = total.y;
  }
}

__global__ void __launch_bounds__(kScanThreads) bucket_scan_kernel(
    int32_t* __restrict__ counts, int num_buckets, int buckets, int Hkv, int tile_rows,
    const int32_t* __restrict__ block_start, int32_t* __restrict__ offsets,
    int4* __restrict__ tiles, int32_t* __restrict__ chunk_tiles, const int32_t* __restrict__ sums) {
  // The sums of the CTAs before this one (none for CTA 0 or a single CTA).
  int2 base = make_int2(0, 0);
  if (blockIdx.x > 0) {
    int2 v = make_int2(0, 0);
    for (int c = threadIdx.x; c < static_cast<int>(blockIdx.x); c += kScanThreads) {
      v.x += sums[2 * c];
      v.y += sums[2 * c + 1];
    }
    cta_exclusive_scan(v, &base);
    __syncthreads();  // warp_sums is read again below
  }
  const ScanItems it = scan_items(counts, num_buckets, tile_rows);
  int2 total;
  const int2 pre = cta_exclusive_scan(it.sum, &total);
  int e = base.x + pre.x, t = base.y + pre.y;
  int chunk = it.lo / buckets, local = it.lo % buckets;  // bucket lo = chunk x buckets + local
#pragma unroll
  for (int k = 0; k < kScanItems; ++k) {
    const int i = it.lo + k;
    if (i >= it.hi) break;
    if (local == 0) chunk_tiles[chunk] = t;
    const int cnt = it.cnt[k];
    offsets[i] = e;
    for (int x = 0; x < cnt; x += tile_rows)
      tiles[t++] = make_int4(block_start[local / Hkv], e + x, min(tile_rows, cnt - x), local % Hkv);
    counts[i] = e;  // becomes the fill cursor
    e += cnt;
    if (++local == buckets) {
      local = 0;
      ++chunk;
    }
  }
  if (blockIdx.x == gridDim.x - 1 && threadIdx.x == kScanThreads - 1) {
    offsets[num_buckets] = base.x + total.x;
    chunk_tiles[num_buckets / buckets] = base.y + total.y;
  }
}

// The same counting sort with the counts first gathered in shared memory: a CTA takes
// `piece` tokens of one query head, all in one chunk (its piece), so all its entries
// fall in the buckets of one (chunk, kv head), one bin per full block (`rows` bins).
// Global atomics drop from one per entry to one per (CTA, non-empty bin): the buckets of
// early blocks receive thousands of entries, and same-address global atomics serialise.
// Without pieces (one chunk): CTA x takes tokens [x piece, (x + 1) piece), piece =
// kIndexPieceTokens or, with MOBA_INDEX_PIECE_TOKENS, smaller (v22; index_piece_tokens).

template <bool FILL>
__global__ void bucket_smem_kernel(const int32_t* __restrict__ sel, const int32_t* __restrict__ cu,
                                   const int32_t* __restrict__ block_offset, int B, int N,
                                   const int2* __restrict__ pieces, int piece, int Hq, int Hkv,
                                   int S, int K, int rows, int32_t* __restrict__ counts,
                                   int32_t* __restrict__ entries) {
  extern __shared__ int bins[];  // (rows)
  const int h = blockIdx.y, kvh = h / (Hq / Hkv), kp = K - 1;
  int tok0, tok1, chunk = 0;
  if (pieces != nullptr) {
    const int2 a = pieces[blockIdx.x];
    tok0 = a.x;
    chunk = a.y;
    tok1 = pieces[blockIdx.x + 1].x;
  } else {
    tok0 = static_cast<int>(blockIdx.x) * piece;
    tok1 = min(N, tok0 + piece);
  }
  int32_t* chunk_counts = counts + static_cast<size_t>(chunk) * rows * Hkv;
  for (int i = threadIdx.x; i < rows; i += blockDim.x) bins[i] = 0;
  __syncthreads();
  const int64_t e0 = static_cast<int64_t>(tok0) * kp, e1 = static_cast<int64_t>(tok1) * kp;
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
    const int base = atomicAdd(&chunk_counts[i * Hkv + kvh], n);  // FILL: counts are the cursors
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

// MOBA_GATHER_BINS, read on every call (a test knob: the global-atomics kernels are
// otherwise reached only beyond kMaxSmemBins full blocks, ~16M tokens at S 512): unset,
// empty or `smem` = the default (shared-memory bins where the full blocks fit); `global` =
// global atomics always; anything else is an error naming the value.
bool force_global_bins() { return env_choice("MOBA_GATHER_BINS", {"smem", "global"}) == 1; }

// MOBA_INDEX_PIECE_TOKENS, read on every call: the single pass's tokens per count / fill
// CTA. Unset, empty or `auto` = index_piece_tokens_auto (docs/kernel_notes.md, "v22": on the
// H200 it halved the index at 8K and cut it 15-18% at 32K); 2048 (kIndexPieceTokens), 256,
// 512 or 1024 = that; anything else is an error naming the value. A chunked index keeps its
// pieces (Plan::index_pieces, kIndexPieceTokens).
int64_t index_piece_tokens(int64_t tokens, int64_t q_heads, int64_t full_blocks, int64_t kp) {
  static_assert(kIndexPieceTokens == 2048, "the knob's value 2048");
  switch (env_choice("MOBA_INDEX_PIECE_TOKENS", {"auto", "2048", "256", "512", "1024"})) {
    case 1: return kIndexPieceTokens;
    case 2: return 256;
    case 3: return 512;
    case 4: return 1024;
    default: return index_piece_tokens_auto(tokens, q_heads, full_blocks, kp);
  }
}

}  // namespace

int64_t GatherIndex::max_tiles(const Plan& plan, int64_t t0, int64_t t1) const {
  const Layout& l = plan.layout();
  return (t1 - t0) * l.num_q_heads * (plan.config().top_k - 1) / tile_rows + buckets + 1;
}

GatherIndex build_gather_index(Plan& plan, const int32_t* sel, int tile_rows, cudaStream_t stream,
                               int64_t chunk_tokens) {
  const Layout& l = plan.layout();
  MOBA_CHECK(tile_rows > 0, "build_gather_index: tile_rows must be > 0, got ", tile_rows);
  const bool global_bins = force_global_bins();  // validates the knob before any launch
  // Entries (token * Hq + head) * (K - 1) + slot and the bucket offsets are int32 (the
  // plan checked the dense sizes; this is MoBA's own limit).
  check_cuda_sizes(l, &plan.config());
  const int S = static_cast<int>(plan.config().block_size), K = static_cast<int>(plan.config().top_k);
  const int Hq = static_cast<int>(l.num_q_heads), Hkv = static_cast<int>(l.num_kv_heads);
  const int B = static_cast<int>(l.batch()), N = static_cast<int>(l.tokens());
  const int kp = K - 1;
  const int rows = static_cast<int>(plan.full_blocks());
  const auto chunks = fwd_chunks(l, plan.config(), chunk_tokens);
  GatherIndex ix;
  ix.chunks = static_cast<int64_t>(chunks.size());
  // The single pass's tokens per count / fill CTA (validates MOBA_INDEX_PIECE_TOKENS before
  // any launch); a chunked index keeps the plan's pieces of kIndexPieceTokens.
  const int64_t piece = ix.chunks > 1 ? kIndexPieceTokens : index_piece_tokens(N, Hq, rows, kp);
  ix.buckets = static_cast<int64_t>(rows) * Hkv;
  ix.tile_rows = tile_rows;
  const int64_t num_buckets = ix.chunks * ix.buckets;
  MOBA_CHECK(num_buckets < std::numeric_limits<int32_t>::max(), "build_gather_index: ",
             ix.chunks, " chunks x ", ix.buckets, " buckets (full blocks x kv heads) = ",
             num_buckets, " do not fit int32; use larger chunks (", kFwdChunkEnv, ")");
  const int64_t num_entries = static_cast<int64_t>(N) * Hq * kp;
  ix.counts = static_cast<int32_t*>(plan.scratch(kSlotCounts, sizeof(int32_t) * (num_buckets + 1)));
  ix.offsets = static_cast<int32_t*>(plan.scratch(kSlotOffsets, sizeof(int32_t) * (num_buckets + 1)));
  ix.entries = static_cast<int32_t*>(
      plan.scratch(kSlotEntries, sizeof(int32_t) * std::max<int64_t>(1, num_entries)));
  ix.tiles = static_cast<int4*>(
      plan.scratch(kSlotTiles, sizeof(int4) * (num_entries / tile_rows + num_buckets + 1)));
  ix.chunk_tiles = static_cast<int32_t*>(plan.scratch(
      kSlotChunkTiles, sizeof(int32_t) * chunk_tiles_ints(ix.chunks, num_buckets)));
  CUDA_CHECK(cudaMemsetAsync(ix.counts, 0, sizeof(int32_t) * (num_buckets + 1), stream));
  if (kp == 0 || ix.buckets == 0) {
    CUDA_CHECK(cudaMemsetAsync(ix.offsets, 0, sizeof(int32_t) * (num_buckets + 1), stream));
    CUDA_CHECK(cudaMemsetAsync(ix.chunk_tiles, 0, sizeof(int32_t) * (ix.chunks + 1), stream));
    return ix;
  }
  // The count and fill kernels' CTAs: pieces of <= kIndexPieceTokens tokens of one chunk
  // (read from the plan's device copy when chunked), or of `piece` tokens from blockIdx.x
  // for one chunk.
  const int64_t n_pieces = ix.chunks > 1 ? fwd_index_piece_count(chunks) : (N + piece - 1) / piece;
  const int2* pieces =
      ix.chunks > 1 ? reinterpret_cast<const int2*>(plan.index_pieces(chunk_tokens)) : nullptr;
  const int threads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>((num_entries + threads - 1) / threads, 4096));
  // Shared-memory bins while one int per full block fits comfortably; else global atomics.
  const bool smem_bins = rows <= kMaxSmemBins && !global_bins;
  const dim3 sgrid(static_cast<unsigned>(n_pieces), Hq);
  const size_t sbytes = sizeof(int) * rows;
  const int nb = static_cast<int>(ix.buckets), np = static_cast<int>(n_pieces);
  const Plan::Device& d = plan.dev();
  if (smem_bins) {
    set_smem_once<bucket_smem_kernel<false>>(4 * kMaxSmemBins);
    set_smem_once<bucket_smem_kernel<true>>(4 * kMaxSmemBins);
    bucket_smem_kernel<false><<<sgrid, threads, sbytes, stream>>>(
        sel, d.cu_seqlens, d.block_offset, B, N, pieces, static_cast<int>(piece), Hq, Hkv, S, K,
        rows, ix.counts, nullptr);
  } else {
    bucket_kernel<false><<<blocks, threads, 0, stream>>>(sel, d.cu_seqlens, d.block_offset, B, N,
                                                         pieces, np, Hq, Hkv, S, K, nb, ix.counts,
                                                         nullptr);
  }
  CUDA_CHECK_LAUNCH();
  const int64_t scan_ctas = index_scan_ctas(num_buckets);
  int32_t* scan_sums = ix.chunk_tiles + ix.chunks + 1;  // chunk_tiles_ints: after the chunks'
  if (scan_ctas > 1) {
    bucket_scan_sums_kernel<<<static_cast<unsigned>(scan_ctas), kScanThreads, 0, stream>>>(
        ix.counts, static_cast<int>(num_buckets), tile_rows, scan_sums);
    CUDA_CHECK_LAUNCH();
  }
  bucket_scan_kernel<<<static_cast<unsigned>(scan_ctas), kScanThreads, 0, stream>>>(
      ix.counts, static_cast<int>(num_buckets), nb, Hkv, tile_rows, d.block_start, ix.offsets,
      ix.tiles, ix.chunk_tiles, scan_sums);
  CUDA_CHECK_LAUNCH();
  if (smem_bins)
    bucket_smem_kernel<true><<<sgrid, threads, sbytes, stream>>>(
        sel, d.cu_seqlens, d.block_offset, B, N, pieces, static_cast<int>(piece), Hq, Hkv, S, K,
        rows, ix.counts, ix.entries);
  else
    bucket_kernel<true><<<blocks, threads, 0, stream>>>(sel, d.cu_seqlens, d.block_offset, B, N,
                                                        pieces, np, Hq, Hkv, S, K, nb, ix.counts,
                                                        ix.entries);
  CUDA_CHECK_LAUNCH();
  mark_phase("gather_index", stream);
  return ix;
}

}  // namespace moba::attn::cuda
