// Shared between the launchers of this folder; not part of the API.
#pragma once

#include <cuda.h>  // CUtensorMap (type only)
#include <cuda_runtime.h>

#include <cstdint>

#include "attention/cuda/attention_cuda.h"
#include "attention/cuda/params.h"
#include "core/cuda_check.cuh"
#include "core/cuda_once.h"

namespace moba::attn::cuda {

// Plan::scratch slots: one device buffer each, kept for the plan's lifetime.
enum ScratchSlot : int {
  kSlotDqAcc,    // (N, Hq, D) fp32
  kSlotDelta,    // (N, Hq) fp32
  kSlotPartO,    // (N, Hq, K-1, D) fp32
  kSlotPartLse,  // (N, Hq, K-1) fp32
  kSlotMeans,    // (full blocks, Hkv, 3, D) bf16: hi, mid, lo terms of the fp32 means
  kSlotCounts,   // (chunks x buckets + 1) int32
  kSlotOffsets,  // (chunks x buckets + 1) int32
  kSlotEntries,  // (N * Hq * (K-1)) int32
  kSlotTiles,    // (max tiles) int4
  kSlotChunkTiles,  // (chunks + 1) int32: each chunk's first tile, then the tile count
  kSlotDeltaT,   // (Hq, N padded to 4) fp32: delta of the wgmma backward, transposed
  kSlotLseT,     // (Hq, N padded to 4) fp32: lse * log2(e), transposed
  kNumSlots
};

// The parameters every attention launch shares (pointers, shapes, scale, MoBA's S and K,
// the grid order), from the plan; the caller adds its outputs and MoBA lists.
AttnParams plan_params(const Plan& plan, const bf16* q, const bf16* k, const bf16* v);
// The grid of a kernel over tiles of `tile` rows (queries or keys) of the longest sequence,
// for each of `heads` heads and each sequence: (heads, tiles, B) where p.heads_fastest, else
// (tiles, heads, B).
dim3 tile_grid(const Plan& plan, const AttnParams& p, int heads, int tile);

// Query rows per tile of the sm_90a MoBA current-block kernel (fwd_moba_wgmma.cuh).
constexpr int kMobaFwdQueryTile = 128;

// The gather index of the whole batch (gather_index.cu): a counting sort of the
// selection's past slots into buckets (chunk, full block, kv head), chunk-major, where the
// chunks are the chunked forward's (attention/fwd_chunks.h; one chunk unchunked). The tiles
// of <= tile_rows entries of one bucket thus come out in chunk order: chunk c's are
// tiles[chunk_tiles[c] .. chunk_tiles[c + 1]). Entries stay absolute ((token * Hq + head) *
// (K-1) + slot) whatever the chunking.
struct GatherIndex {
  int32_t* counts = nullptr;
  int32_t* offsets = nullptr;  // (chunks x buckets + 1): bucket starts in entries
  int32_t* entries = nullptr;  // (N, Hq, K-1) at most
  int4* tiles = nullptr;       // {first key token, first entry, count, kv head}
  int32_t* chunk_tiles = nullptr;  // (chunks + 1), device
  int64_t chunks = 1;
  int64_t buckets = 0;         // per chunk: full blocks x Hkv
  int tile_rows = 0;
  // The grid bound of a launch over the tiles of the query tokens [t0, t1) of one chunk
  // (the whole batch unchunked): its entries / tile_rows + buckets + 1 (extra CTAs exit).
  int64_t max_tiles(const Plan& plan, int64_t t0, int64_t t1) const;
};

// means_out (may be null): also the fp32 block means, (B, blocks_per_seq, Hkv, D); returns
// whether they were computed (K > 1; with K = 1 the gate needs no means and writes none).
bool gate_launch(Plan& plan, const bf16* q, const bf16* k, int32_t* sel, cudaStream_t stream,
                 float* means_out = nullptr, int64_t blocks_per_seq = 0);
// Context parallel's shard gate (attention_cuda.h, moba_gate_shard_means / moba_gate_shard).
const bf16* gate_shard_means(Plan& plan, const bf16* k, cudaStream_t stream);
void gate_shard_launch(const Plan& plan, const bf16* q, const bf16* msplit_all, int64_t pos0,
                       int32_t* sel, cudaStream_t stream);
// The gather index of the selection's past slots, for the chunks of `chunk_tokens` (0 = one
// chunk, the single pass and the backward's layout: bucket (full block, kv head)). One
// memset, one count, one scan and one fill kernel for all chunks. The count and fill
// kernels' CTAs take pieces of <= kIndexPieceTokens tokens of one chunk (Plan::
// index_pieces); where the full blocks exceed the shared-memory bins (or
// MOBA_GATHER_BINS=global, a test knob) they count with global atomics instead.
GatherIndex build_gather_index(Plan& plan, const int32_t* sel, int tile_rows,
                               cudaStream_t stream, int64_t chunk_tokens = 0);

// Whether the sm_90a kernels run here: an sm_90 device, head dim 64 or 128, a build for
// sm_90a (checked on the dense forward kernel's register count; all wgmma kernels are
// built with the same flags). Cached per device.
bool wgmma_available(int64_t head_dim);
// The switch of one sm_90a kernel, the environment variable `var` (MOBA_DENSE_FWD,
// MOBA_DENSE_BWD, MOBA_MOBA_FWD, MOBA_MOBA_BWD), read on every call: unset or empty = the
// wgmma kernel where wgmma_available (the default); `mma` = the mma.sync kernel; `wgmma` =
// insist (the wgmma launcher then fails with a message where it cannot run); anything else
// is an error naming the value. MoBA with S = 64 keeps the mma.sync kernels regardless.
bool wgmma_switch(const char* var, int64_t head_dim);
// A moba::Error naming `what` unless the current device is sm_90 (cached per device).
void wg_require_sm90(const char* what);

// sm_90a dense forward (wgmma + TMA, fwd_wgmma.cuh), dense_forward's default
// (wgmma_switch("MOBA_DENSE_FWD", D)).
void dense_forward_wgmma(const Plan& plan, const AttnParams& p, cudaStream_t stream);

// sm_90a dense backward (wgmma + TMA, bwd_wgmma.cuh), dense_backward's default
// (wgmma_switch("MOBA_DENSE_BWD", D)).
void dense_backward_wgmma(Plan& plan, AttnParams p, cudaStream_t stream);
// Shared by the sm_90a kernels' launchers (attention_bwd_wgmma.cu defines them; the
// forwards use wg_map_bf16 and wg_configure too).
// Tensor maps: (N, H, D) bf16 as (D, H, N), box 64 columns x 1 head x `rows`, 128B swizzle;
// transposed (Hq, n_pad) fp32 rows, box `rows` tokens x 1 head; the fp32 dQ accumulator,
// box 32 columns x 1 head x 64 rows, 128B swizzle.
CUtensorMap wg_map_bf16(const bf16* base, int64_t n_tok, int64_t heads, int64_t D, int rows,
                           const char* what);
CUtensorMap wgbwd_map_rows(const float* base, int64_t n_tok, int64_t heads, int64_t n_pad,
                           int rows, const char* what);
CUtensorMap wgbwd_map_dq(const float* base, int64_t n_tok, int64_t heads, int64_t D);
// The seven maps of a wgmma backward launch (Q and dO boxes of br rows, K and V of bc,
// lse / delta boxes of row_box tokens, the dQ accumulator).
struct WgBwdMaps {
  CUtensorMap q, k, v, dout, lse, delta, dq;
};
struct WgBwdPrep;
WgBwdMaps wgbwd_maps(const Plan& plan, const AttnParams& p, const WgBwdPrep& r, int br, int bc,
                     int row_box);
// The register-pool check of setmaxnreg (a moba::Error naming `what` if numRegs x threads
// < reg_pool_needed, e.g. a build without sm_90a) and the dynamic shared-memory size.
void wg_configure(const void* kernel, int threads, int reg_pool_needed, int smem_bytes,
                  const char* what);

// wg_configure of an sm_90a kernel, once per device.
template <auto Kernel>
void wg_configure_once(int threads, int reg_pool_needed, int smem_bytes, const char* what) {
  once_per_device<Kernel>([&] {
    wg_configure(reinterpret_cast<const void*>(Kernel), threads, reg_pool_needed, smem_bytes, what);
  });
}
// Preparation kernel: delta = rowsum(dO o O) and lse * log2(e), transposed to (Hq, n_pad)
// (n_pad = N rounded up to 4), and the fp32 dQ accumulator zeroed (p.dq_acc, p.delta set).
struct WgBwdPrep {
  float* lse_t = nullptr;
  float* delta_t = nullptr;
  int64_t n_pad = 0;
};
WgBwdPrep wgbwd_prepare(Plan& plan, AttnParams& p, cudaStream_t stream);

// One launch of a wgmma backward kernel with traits T (key-tile-major: grid tile_grid over
// Hkv and T::kBc keys): its seven tensor maps, the register-pool check once per device (a
// moba::Error naming `what`); `extra`: the kernel's parameters after p.
template <class T, auto Kernel, class... Extra>
void wgbwd_launch(const Plan& plan, const AttnParams& p, const WgBwdPrep& r, const char* what,
                  cudaStream_t stream, Extra... extra) {
  const WgBwdMaps m = wgbwd_maps(plan, p, r, T::kBr, T::kBc, T::kRowBox);
  wg_configure_once<Kernel>(T::kThreads, T::kRegPoolNeeded, T::kSmemBytes, what);
  Kernel<<<tile_grid(plan, p, p.Hkv, T::kBc), T::kThreads, T::kSmemBytes, stream>>>(
      m.q, m.k, m.v, m.dout, m.lse, m.delta, m.dq, p, extra...);
  CUDA_CHECK_LAUNCH();
}
// A wgmma backward around its kernel: the device and head-dim checks (errors naming
// `what`), the preparation kernel, the kernel (launch64 or launch128 by head dim; its phase
// named `phase`), then dQ to bf16 (attention_bwd_wgmma.cu).
using WgBwdLaunch = void (*)(const Plan&, const AttnParams&, const WgBwdPrep&, cudaStream_t);
void wgbwd_run(Plan& plan, AttnParams p, const char* what, const char* phase,
               WgBwdLaunch launch64, WgBwdLaunch launch128, cudaStream_t stream);

// sm_90a MoBA backward (wgmma + TMA, bwd_moba_wgmma.cuh), moba_backward's default for
// S >= 128 (wgmma_switch("MOBA_MOBA_BWD", D); a CTA's 128 keys must lie in one block).
// p: the backward's parameters with sel, entries and bucket_offset filled in (as for the
// mma.sync MoBA backward). Fails with a message where it cannot run (not sm_90, a build
// without sm_90a, head dim other than 64 / 128, S < 128).
void moba_backward_wgmma(Plan& plan, AttnParams p, cudaStream_t stream);

// dq = bf16(dq_acc * scale) over rows x D elements (attention_bwd.cu).
void dq_convert(const AttnParams& p, int64_t rows, int64_t D, cudaStream_t stream);

// sm_90a MoBA forward (wgmma + TMA, fwd_moba_wgmma.cuh; attention_fwd_wgmma.cu),
// moba_forward's default for S a multiple of 128 (wgmma_switch("MOBA_MOBA_FWD", D)). The
// launchers fail with a message where the kernels cannot run (not an sm_90 device, no
// sm_90a build, head dim not 64 or 128, S not a multiple of 128).
// Past blocks: the gathered tiles of <= 128 entries (p.entries, p.tiles, p.tile_first,
// p.num_tiles of build_gather_index with tile_rows 128: one chunk's range), taken in turn by one persistent CTA per SM
// (MOBA_MOBA_FWD_GRID=tiles: one CTA per tile, grid = max_tiles). Writes p.part_o /
// p.part_lse exactly as FwdMode::kMobaPast.
void moba_forward_past_wgmma(const Plan& plan, const AttnParams& p, int64_t max_tiles,
                             cudaStream_t stream);
// Current block (causal) + merge with the past partials, persistent as the past blocks;
// writes p.o and p.lse exactly as FwdMode::kMobaCurrent. Its work: p.batch sequences from
// p.cu_seqlens x Hq x p.q_tiles tiles of 128 rows within [p.q_lo, p.q_hi) (the chunked
// forward sets them); p.batch 0 = the whole batch (tile_grid's tiles).
void moba_forward_current_wgmma(const Plan& plan, const AttnParams& p, cudaStream_t stream);

}  // namespace moba::attn::cuda
