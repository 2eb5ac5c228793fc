// The one parameter struct of the attention kernels, passed by value. The launcher fills
// what a kernel needs; shapes are in the comments, all pointers are device memory.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace moba::attn::cuda {

struct AttnParams {
  const __nv_bfloat16* q;  // (N, Hq, D)
  const __nv_bfloat16* k;  // (N, Hkv, D)
  const __nv_bfloat16* v;  // (N, Hkv, D)
  __nv_bfloat16* o;        // (N, Hq, D)    forward output; backward input
  float* lse;              // (N, Hq)       natural log-sum-exp of the scaled scores

  // Backward only.
  const __nv_bfloat16* dout;  // (N, Hq, D)
  float* delta;               // (N, Hq)      rowsum(dout * out)
  float* dq_acc;              // (N, Hq, D)   fp32 accumulator of dq / scale
  __nv_bfloat16* dq;          // (N, Hq, D)
  __nv_bfloat16* dk;          // (N, Hkv, D)
  __nv_bfloat16* dv;          // (N, Hkv, D)

  const int32_t* cu_seqlens;    // (B + 1)
  const int32_t* block_offset;  // (B + 1) first full-block row of each sequence
  const int32_t* block_start;   // (rows)  packed token index of each full block's first key

  int N, Hq, Hkv, group;  // group = Hq / Hkv
  float scale;            // softmax scale
  float scale_log2;       // scale * log2(e): the kernels work with exp2
  int heads_fastest;      // grid order of the contiguous kernels (see fwd_kernel.cuh)

  // MoBA only.
  int S, K, kp;          // block size, top-k, kp = K - 1 past slots per (token, head)
  const int32_t* sel;    // (N, Hq, K) selected block ids, ascending, current last, -1 pad
  float* part_o;         // (N, Hq, kp, D) normalised output of each past slot
  float* part_lse;       // (N, Hq, kp)
  // Gather lists: bucket (row, kvh) = (full block, kv head) -> the (token, query head,
  // slot) entries that selected it, encoded (token * Hq + h) * kp + slot.
  const int32_t* bucket_offset;  // (rows * Hkv + 1)
  const int32_t* entries;        // (bucket_offset[last])
  const int4* tiles;             // forward work list: {first key token, first entry, count, kvh}
  // The past kernels' tiles are tiles[first .. *num_tiles), first = *tile_first (null: 0):
  // one chunk's range of the whole batch's index (GatherIndex::chunk_tiles c and c + 1).
  const int32_t* num_tiles;      // (1) the end of the launch's tiles
  const int32_t* tile_first;     // (1) or null
  // The persistent sm_90a current-block kernel's work: batch x Hq x q_tiles query tiles of
  // 128 rows (q_tiles = those of the longest sequence), in the contiguous grid's order.
  int batch, q_tiles;
  // The current-block kernels' query rows: packed tokens [q_lo, q_hi) (the whole batch
  // unchunked; one chunk of the chunked forward, attention/fwd_chunks.h). A sequence's
  // query tiles start at max(0, q_lo - its start) / tile (q_lo lies a multiple of the tile
  // after its sequence's start); tiles at or past q_hi are skipped. cu_seqlens may then
  // point at the chunk's first sequence, with batch (and the grid) over the chunk's ones.
  int q_lo, q_hi;
};

}  // namespace moba::attn::cuda
