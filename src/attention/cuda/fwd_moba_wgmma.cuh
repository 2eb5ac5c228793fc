// MoBA forward for Hopper (sm_90a): the two attention kernels of moba_forward on warpgroup
// MMAs fed by TMA, with the CTA of the dense wgmma forward (fwd_wgmma.cuh), persistent. One
// kernel template, two modes with the contracts of fwd_kernel.cuh's FwdMode::kMobaCurrent
// and kMobaPast (tested on the H100 and H200, see docs/kernel_notes.md, "v11" and "v12"):
//   kCurrent  MoBA's current block: work item = 128 consecutive query rows of one
//             (sequence, head), taken in the contiguous grid's order (item blockIdx.x, then
//             + gridDim.x, ...); keys from the start of the rows' MoBA block (S >= 128 and a
//             multiple of 128, so a tile of 128 rows lies inside one block and the key tiles
//             line up with the query tiles) up to the last row. The epilogue merges the
//             rows' past-block partials (part_o, part_lse, written by the kPast launch
//             before) by log-sum-exp and writes out (bf16) and lse.
//   kPast     MoBA's past blocks: the CTAs take the gather index's tiles in turn (tile
//             blockIdx.x, then + gridDim.x, ..., counted from *p.tile_first: the chunked
//             forward's chunk, docs/kernel_notes.md "v18"), each tile <= 128 entries of one (full
//             block, kv head) bucket, entry = (token * Hq + head) * kp + slot; keys = the
//             whole block (S keys, contiguous from the tile's first key token), no mask.
//             Writes the normalised fp32 partial output and the lse per entry; rows past
//             the tile's count are zero-filled, computed, never written.
// With a grid of one CTA per tile either kernel is the plain (non-persistent) kernel.
//
// CTA = 3 warpgroups, as fwd_wgmma.cuh. Warpgroups 0, 1 (consumers): 64 query rows each.
// Per key tile of Bc = 128 (the steps shared with the dense kernel, fwd_wgmma_step.cuh):
//   S = Q K^T        wgmma m64n128k16, A = Q and B = K from shared memory (K-major, 128-byte
//                    swizzle), D/16 k-steps, fp32 accumulators in registers;
//   online softmax   on the accumulator layout (each row lives in one quad of lanes), causal
//                    mask only on the diagonal (last) tile (kCurrent);
//   O += P V         wgmma m64nDk16, A = P from registers (bf16), B = V from shared memory
//                    (MN-major, imm-trans-b = 1), Bc/16 k-steps;
//   then the consumer frees the ring slot (mbarrier arrive).
// Warpgroup 2 (producer): one thread issues the TMA copies of K and V of every key tile into
// a ring of kStages slots; it waits for a slot to be freed by both consumers ("empty") and
// arms the slot's "full" barriers with the byte count. Q comes by TMA (kCurrent) or,
// gathered row by row, by all 128 producer threads with cp.async (kPast: 16-byte copies
// with the 128B swizzle applied by hand, then wait + fence.proxy.async + mbarrier arrive),
// into one of two Q buffers so that the next item's rows arrive while the consumers still
// work on this one. The ring position is a running key-tile count shared by the producer
// and the consumers across work items. A consumer warpgroup whose 64 rows are all past the
// tile's row count does no MMA: it still waits for every key tile and frees its slot.
// Key boxes may run past the sequence (into the next sequence's tokens, or past N where TMA
// fills zeros); such keys are later than every real query row of the tile, so the causal
// mask removes them, and rows past the sequence are never written.
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>

#include <cmath>

#include "attention/cuda/fwd_wgmma_step.cuh"
#include "attention/cuda/mma.cuh"
#include "attention/cuda/params.h"
#include "attention/cuda/wgmma.cuh"

namespace moba::attn::cuda {

enum class WgMobaMode { kCurrent, kPast };

// A hint: fetch the 128-byte line holding a (an address inside an allocation) into L2;
// the thread does not wait for it.
__device__ __forceinline__ void prefetch_l2(const void* a) {
  asm volatile("prefetch.global.L2 [%0];\n" ::"l"(a));
}

template <int D, WgMobaMode MODE>
struct WgMobaFwdTraits {
  static_assert(D == 64 || D == 128, "wgmma MoBA forward: head dim 64 or 128");
  static constexpr bool kPast = MODE == WgMobaMode::kPast;
  static constexpr int kBr = 128;                  // query rows (entries) per CTA tile
  static constexpr int kBc = 128;                  // keys per tile
  static constexpr int kStages = D == 64 ? 3 : 2;  // K/V ring depth
  static constexpr int kThreads = 384;             // 2 consumer + 1 producer warpgroups
  // setmaxnreg targets (PTX ISA "setmaxnreg": multiple of 8 in [24, 256], executed by every
  // warp of a warpgroup). setmaxnreg.inc blocks until the CTA's register pool can supply
  // the registers, and the pool is what the CTA got at launch (numRegs x kThreads): 128 x
  // 24 + 256 x 240 = 64512 = 384 x 168, so the kernel must be compiled to (at least) the
  // 168 of __launch_bounds__(384, 1), or the consumers wait forever. The launcher checks
  // numRegs (attention_fwd_wgmma.cu). The past-block producer computes gather addresses (a
  // few more registers than the TMA-only producer).
  static constexpr int kProducerRegs = kPast ? 40 : 24;
  static constexpr int kConsumerRegs = kPast ? 232 : 240;
  static constexpr int kRegPoolNeeded = 128 * kProducerRegs + 256 * kConsumerRegs;
  static_assert(kProducerRegs % 8 == 0 && kConsumerRegs % 8 == 0 && kProducerRegs >= 24 &&
                    kConsumerRegs <= 256,
                "setmaxnreg operand: multiple of 8 in [24, 256]");
  static_assert(kRegPoolNeeded <= 168 * kThreads, "register pool of __launch_bounds__(384, 1)");
  static constexpr int kColBlocks = D / 64;  // 128-byte swizzle column blocks (TMA boxes)
  static constexpr int kQBufs = 2;  // the next item's rows load during this one
  static constexpr int kQBytes = kBr * D * 2;
  static constexpr int kTileBytes = kBc * D * 2;  // one K (or V) tile
  static constexpr int kBarBytes = 8 * (2 * kQBufs + 3 * kStages);
  // kCurrent at D 64: the merge's inputs of the tile (each consumer thread's two rows:
  // selection, partial lse and partial outputs of up to kStageSlots past slots) are copied
  // into shared memory with cp.async when the tile starts, so that the epilogue reads no
  // global memory. Per consumer thread and row: K ints, kp floats, kp x D/8 float2. Larger
  // K, or D 128 (no room: 193 KB are in use), read them from global memory (L2-prefetched).
  static constexpr int kStageSlots = 2;  // kp <= 2, i.e. K <= 3
  static constexpr bool kStaged = !kPast && D == 64;
  static constexpr int kStagePoBytes = kStaged ? 256 * 2 * kStageSlots * (D / 8) * 8 : 0;
  static constexpr int kStageIdxBytes = kStaged ? 256 * 2 * (2 * kStageSlots + 1) * 4 : 0;
  // +1024: the dynamic shared-memory base is aligned up to 1024 bytes in the kernel.
  static constexpr int kSmemBytes = 1024 + kQBufs * kQBytes + 2 * kStages * kTileBytes + kBarBytes +
                                    kStagePoBytes + kStageIdxBytes + 16;
  static_assert(kSmemBytes <= 227 * 1024, "shared memory");
  // kPast's Q gather: 16-byte chunks per row, rows per warp instruction.
  static constexpr int kChunksPerRow = D / 8;
  static constexpr int kRowsPerStep = 32 / kChunksPerRow;
};

// One work item of a CTA: 128 query rows (or gathered entries) and their key range.
struct WgMobaItem {
  int kvh = 0, head = 0;
  int k_begin = 0;    // first key token
  int n_tiles = 0;    // key tiles of Bc
  int count = 0;      // rows (entries) in use, 1..128
  int first_tok = 0;  // kCurrent: the first query token; kPast: unused
  int seq_start = 0;  // kCurrent
  int ent0 = 0;       // kPast: the first entry of the tile
};

// The query tile at (x, y, z) of the contiguous grid (extents ex, ey): the last query tiles
// first; (Hq, tiles, B) heads fastest, else (tiles, Hq, B), tiles counted from the first of
// the launch's rows [q_lo, q_hi) in the sequence. False: the tile lies past its sequence's
// end or past q_hi.
__device__ __forceinline__ bool moba_current_item(const AttnParams& p, int x, int y, int z,
                                                  int ex, int ey, WgMobaItem& it) {
  constexpr int Br = 128, Bc = 128;
  it.seq_start = p.cu_seqlens[z];
  const int len = p.cu_seqlens[z + 1] - it.seq_start;
  const int m = max(0, p.q_lo - it.seq_start) / Br + (p.heads_fastest ? ey - 1 - y : ex - 1 - x);
  if (m * Br >= len || it.seq_start + m * Br >= p.q_hi) return false;
  it.head = p.heads_fastest ? x : y;
  it.kvh = it.head / p.group;
  it.first_tok = it.seq_start + m * Br;
  it.count = min(Br, len - m * Br);
  // From the start of the rows' block (S is a multiple of Br: the tile lies in one
  // block). The diagonal tile is the last.
  it.k_begin = it.seq_start + (m * Br / p.S) * p.S;
  it.n_tiles = (it.first_tok + it.count - it.k_begin + Bc - 1) / Bc;
  return true;
}

// kCurrent's merge of the rows row0 and row0 + 8 of a tile (o normalised, lse natural
// log): out = sum_i exp(lse_i - lse_tot) out_i over the current part and each valid past
// slot (slot sl holds a past block iff sel[sl] >= 0 and sel[sl] < c, c = the row's current
// block; the selection is ascending with c last), then out (bf16) and lse_tot. The
// arithmetic is in the order of one row, slot by slot. The inputs come through accessors:
// sel_at(h, sl), lse_at(h, sl) and po_at(h, sl, x) (the float2 at columns 8x + 2qd of the
// slot's partial output), reading either the shared-memory copy or global memory; the
// global loads are grouped so that few round trips are in series (both rows' selections
// and lse two slots at a time, then each row's partial outputs: two slots at a time at D
// 64, one at D 128, where two would spill).
template <int D, typename SelAt, typename LseAt, typename PoAt>
__device__ __forceinline__ void moba_merge_epilogue(const AttnParams& p, const WgMobaItem& item,
                                                    int row0, const int (&tok)[2],
                                                    const float (&lse)[2], float (&o)[D / 2],
                                                    SelAt sel_at, LseAt lse_at, PoAt po_at) {
  constexpr int kSlots = 2;  // slots whose selections and lse are in flight together
  constexpr int kSlotsO = D == 64 ? 2 : 1;  // ... whose partial outputs are
  const int qd = (threadIdx.x % 32) % 4;
  const int kp = p.kp;
  bool live[2];
  size_t row[2];
  int c[2];
  float mx[2], lse_tot[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    live[h] = row0 + 8 * h < item.count;
    row[h] = static_cast<size_t>(tok[h]) * p.Hq + item.head;
    c[h] = (tok[h] - item.seq_start) / p.S;
    mx[h] = lse[h];
  }
  // Slot sl of row h: its partial lse, or -inf when it holds no past block.
  auto slot_lse = [&](int h, int sl) -> float {
    if (!live[h] || sl >= kp) return -INFINITY;
    const int b = sel_at(h, sl);
    return b >= 0 && b < c[h] ? lse_at(h, sl) : -INFINITY;
  };
  // fn(h, lse) for every valid slot of both rows, in slot order per row; the loads of two
  // slots of both rows are in flight together.
  auto for_valid_slots = [&](auto fn) {
    for (int s0 = 0; s0 < kp; s0 += kSlots) {
      float v[2][kSlots];
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int j = 0; j < kSlots; ++j) v[h][j] = slot_lse(h, s0 + j);
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int j = 0; j < kSlots; ++j)
          if (v[h][j] != -INFINITY) fn(h, v[h][j]);
    }
  };
  for_valid_slots([&](int h, float v) { mx[h] = fmaxf(mx[h], v); });
  float sum[2] = {expf(lse[0] - mx[0]), expf(lse[1] - mx[1])};
  // The same values again (from L1 or shared memory).
  for_valid_slots([&](int h, float v) { sum[h] += expf(v - mx[h]); });
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    lse_tot[h] = mx[h] + logf(sum[h]);
    const float w_cur = expf(lse[h] - lse_tot[h]);
#pragma unroll
    for (int x = 0; x < D / 8; ++x) {
      o[4 * x + 2 * h] *= w_cur;
      o[4 * x + 2 * h + 1] *= w_cur;
    }
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if (!live[h]) continue;
    for (int s0 = 0; s0 < kp; s0 += kSlotsO) {
      float w[kSlotsO];
      bool ok[kSlotsO];
      float2 pv[kSlotsO][D / 8];
#pragma unroll
      for (int j = 0; j < kSlotsO; ++j) {
        const float sl_lse = slot_lse(h, s0 + j);
        ok[j] = sl_lse != -INFINITY;
        w[j] = ok[j] ? expf(sl_lse - lse_tot[h]) : 0.f;
        if (ok[j]) {
#pragma unroll
          for (int x = 0; x < D / 8; ++x) pv[j][x] = po_at(h, s0 + j, x);
        }
      }
#pragma unroll
      for (int j = 0; j < kSlotsO; ++j) {
        if (!ok[j]) continue;
#pragma unroll
        for (int x = 0; x < D / 8; ++x) {
          o[4 * x + 2 * h] += w[j] * pv[j][x].x;
          o[4 * x + 2 * h + 1] += w[j] * pv[j][x].y;
        }
      }
    }
    __nv_bfloat16* dst = p.o + row[h] * D;
#pragma unroll
    for (int x = 0; x < D / 8; ++x)
      *reinterpret_cast<uint32_t*>(dst + 8 * x + 2 * qd) =
          detail::pack_bf16(o[4 * x + 2 * h], o[4 * x + 2 * h + 1]);
    if (qd == 0) p.lse[row[h]] = lse_tot[h];
  }
}

// cp.async of 4 or 8 bytes (L1-allocating .ca: the only sizes .cg lacks).
template <int BYTES>
__device__ __forceinline__ void cp_async_ca(void* smem_dst, const void* src) {
  static_assert(BYTES == 4 || BYTES == 8, "cp.async.ca: 4 or 8 bytes here");
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(wg::smem_addr(smem_dst)), "l"(src),
               "n"(BYTES)
               : "memory");
}

// PP: the consumer warpgroups' ping-pong (fwd_wgmma_step.cuh; MOBA_FWD_PINGPONG=1), its
// token carried across the CTA's work items; a warpgroup without rows in an item passes it
// at the same points without MMAs.
template <int D, WgMobaMode MODE, bool PP = false>
__global__ void __launch_bounds__(384, 1)
    moba_fwd_wgmma_kernel(const __grid_constant__ CUtensorMap tm_q,
                          const __grid_constant__ CUtensorMap tm_k,
                          const __grid_constant__ CUtensorMap tm_v, const AttnParams p) {
#if MOBA_WGMMA_ENABLED
  using namespace wg;
  using T = WgMobaFwdTraits<D, MODE>;
  constexpr bool PAST = T::kPast;
  constexpr int Br = T::kBr, Bc = T::kBc, ST = T::kStages, CB = T::kColBlocks, QB = T::kQBufs;
  static_assert(T::kTileBytes == Bc * D * 2, "ring slots as fwd_wgmma_step.cuh lays them out");
  extern __shared__ unsigned char smem_raw[];
  // 1024-byte alignment: swizzle atoms (8 rows x 128 bytes) must start on it.
  const uint32_t raw_addr = smem_addr(smem_raw);
  unsigned char* smem = smem_raw + ((1024 - (raw_addr & 1023)) & 1023);
  __nv_bfloat16* sQ = reinterpret_cast<__nv_bfloat16*>(smem);  // [QB][CB][Br][64]
  __nv_bfloat16* sK = sQ + QB * Br * D;                         // [ST][CB][Bc][64]
  __nv_bfloat16* sV = sK + ST * Bc * D;                         // [ST][CB][Bc][64]
  uint64_t* bars = reinterpret_cast<uint64_t*>(sV + ST * Bc * D);
  // kCurrent at D 64: the merge inputs' copies (T::kStaged), after the barriers.
  float2* stage_po = reinterpret_cast<float2*>(smem + (QB * Br * D + 2 * ST * Bc * D) * 2 +
                                               ((T::kBarBytes + 15) / 16) * 16);
  int* stage_idx = reinterpret_cast<int*>(stage_po) + T::kStagePoBytes / 4;
  uint64_t* full_q = bars;                // [QB]
  uint64_t* q_empty = bars + QB;          // [QB]
  uint64_t* full_k = bars + 2 * QB;       // [ST]
  uint64_t* full_v = bars + 2 * QB + ST;  // [ST]
  uint64_t* empty = bars + 2 * QB + 2 * ST;  // [ST]

  // The CTA's work items. Every early exit is CTA-uniform and before any barrier.
  WgMobaItem item;
  // kPast: the launch's tiles [tile0, *num_tiles), one chunk's of the whole batch's index.
  const int tile0 = PAST && p.tile_first != nullptr ? *p.tile_first : 0;
  const int total = PAST ? *p.num_tiles - tile0 : p.batch * p.Hq * p.q_tiles;
  const int first = static_cast<int>(blockIdx.x), stride = static_cast<int>(gridDim.x);
  if (first >= total) return;
  const int n_items = (total - first + stride - 1) / stride;
  // Item i of a persistent CTA: tile blockIdx.x + i * gridDim.x of the gather index
  // (kPast) or of the contiguous grid (kCurrent: false where the tile holds no row
  // of its sequence; producer and consumers skip it alike).
  auto next_item = [&](int i, WgMobaItem& it) -> bool {
    const int t = static_cast<int>(blockIdx.x) + i * static_cast<int>(gridDim.x);
    if constexpr (PAST) {
      const int4 v = p.tiles[tile0 + t];  // {first key token, first entry, count, kv head}
      it.k_begin = v.x;
      it.ent0 = v.y;
      it.count = v.z;
      it.kvh = v.w;
      it.n_tiles = p.S / Bc;
      return true;
    } else {
      const int ex = p.heads_fastest ? p.Hq : p.q_tiles, ey = p.heads_fastest ? p.q_tiles : p.Hq;
      return moba_current_item(p, t % ex, (t / ex) % ey, t / (ex * ey), ex, ey, it);
    }
  };

  const int tid = threadIdx.x;
  const int wgi = tid / 128;  // warpgroup
  if (tid == 0) {
    for (int b = 0; b < QB; ++b) {
      // kPast: the 128 producer threads each arrive once after their Q copies landed;
      // every consumer thread frees the buffer once per item.
      mbar_init(&full_q[b], PAST ? 128 : 1);
      mbar_init(&q_empty[b], 256);
    }
    wgfwd_init_ring<ST>(full_k, full_v, empty);
    mbar_fence_init();
  }
  __syncthreads();

  if (wgi == 2) {
    // ---------------- producer ----------------
    setmaxnreg_dec<T::kProducerRegs>();
    const int pt = tid - 256;
    int ring = 0;  // key tiles issued so far: slot ring % ST, use ring / ST
    // K and V of the key tile at kt into the next ring slot, after both consumers freed it
    // (advances ring).
    auto issue_kv = [&](int kvh, int kt) {
      wgfwd_load_kv<D, Bc, ST>(ring, sK, sV, full_k, full_v, empty, &tm_k, &tm_v, kvh, kt);
    };
    if constexpr (PAST) {
      if (pt == 0) {
        tma_prefetch_desc(&tm_k);
        tma_prefetch_desc(&tm_v);
      }
      const int w = pt / 32, lane = pt % 32;
      const int my_row = 32 * w + lane;
      constexpr int CPR = T::kChunksPerRow, RPS = T::kRowsPerStep;
      for (int i = 0; i < n_items; ++i) {
        WgMobaItem it;
        next_item(i, it);
        const int qb = i % 2;
        // The first item's first key tiles go out before its Q gather (fresh slots, no
        // waiting); later items gather Q first: their key tiles wait for ring slots that
        // the consumers free while they finish the previous item.
        int issued = 0;
        if (i == 0 && pt == 0)
          for (; issued < min(ST, it.n_tiles); ++issued) issue_kv(it.kvh, it.k_begin + issued * Bc);
        // Q buffer qb is free once both consumer warpgroups are done with item i - 2.
        mbar_wait(&q_empty[qb], ((i / 2) & 1) ^ 1);
        // Gathered Q rows: warp w copies rows 32w..32w+31. Lane l looks up row 32w + l's
        // entry; its q row is entry / kp = token * Hq + head (-1: past the tile's count,
        // zero-filled). Per step the warp copies kRowsPerStep whole rows (128 or 256
        // contiguous bytes each), chunk c of row r to the 128B-swizzled position: column
        // block c / 8, row r (128 bytes), 16-byte chunk (c % 8) ^ (r % 8) (wgmma.cuh).
        const int my_q = my_row < it.count ? p.entries[it.ent0 + my_row] / p.kp : -1;
        const uint32_t q_base = smem_addr(sQ + qb * Br * D);
#pragma unroll 4
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
        mbar_arrive(&full_q[qb]);    // release; the consumers acquire with try_wait
        if (pt == 0)
          for (; issued < it.n_tiles; ++issued) issue_kv(it.kvh, it.k_begin + issued * Bc);
      }
    } else if (pt == 0) {
      tma_prefetch_desc(&tm_q);
      tma_prefetch_desc(&tm_k);
      tma_prefetch_desc(&tm_v);
      // Q, then K and V of every key tile, item by item (kCurrent: into Q buffer qi % 2,
      // free once the consumers are done with item qi - 2; qi counts the items with rows).
      int qi = 0;
      for (int i = 0; i < n_items; ++i) {
        WgMobaItem it;
        if (!next_item(i, it)) continue;
        const int qb = qi % QB;
        mbar_wait(&q_empty[qb], ((qi / 2) & 1) ^ 1);
        ++qi;
        __nv_bfloat16* q_dst = sQ + qb * Br * D;
        mbar_arrive_expect_tx(&full_q[qb], T::kQBytes);
#pragma unroll
        for (int cb = 0; cb < CB; ++cb)
          tma_load_3d(q_dst + cb * Br * 64, &tm_q, cb * 64, it.head, it.first_tok, &full_q[qb]);
        for (int j = 0; j < it.n_tiles; ++j) issue_kv(it.kvh, it.k_begin + j * Bc);
      }
    }
    return;
  }

  // ---------------- consumers ----------------
  setmaxnreg_inc<T::kConsumerRegs>();
  const int lane = tid % 32, wi = (tid / 32) % 4;
  const int g = lane / 4, qd = lane % 4;
  const int wg_row0 = wgi * 64;            // first row of this warpgroup in the tile
  const int row0 = wg_row0 + wi * 16 + g;  // this thread's rows: row0, row0 + 8
  const uint32_t k_addr = smem_addr(sK);
  const uint32_t v_addr = smem_addr(sV);
  int ring = 0;  // key tiles consumed so far (the producer's count)
  int qi = 0;    // items with rows so far (the producer's count): Q buffer qi % QB
  if (PP) wgfwd_pp_first_token(wgi);

  for (int i = 0; i < n_items; ++i) {
    if (!next_item(i, item)) continue;  // kCurrent: a tile past its sequence's end
    const int qb = qi % QB;
    const uint32_t q_par = (qi / QB) & 1;
    ++qi;
    if (PP) wgfwd_pp_take(wgi);  // the token for this item's first S
    if (wg_row0 >= item.count) {
      // No row of this warpgroup exists: no MMA, but every tile's slot must be freed by
      // both warpgroups. Waiting for the tile first keeps each arrival in its own phase.
      // With PP the token still passes as if the MMAs were issued.
      for (int j = 0; j < item.n_tiles; ++j, ++ring) {
        const int st = ring % ST;
        const uint32_t par = (ring / ST) & 1;
        mbar_wait(&full_k[st], par);
        if (PP) wgfwd_pp_pass(wgi);
        mbar_wait(&full_v[st], par);
        if (PP) wgfwd_pp_take(wgi);
        mbar_arrive(&empty[st]);
      }
      if (PP) wgfwd_pp_pass(wgi);
      mbar_arrive(&q_empty[qb]);
      continue;
    }

    const int tok[2] = {item.first_tok + row0, item.first_tok + row0 + 8};  // kCurrent
    const uint32_t q_addr = smem_addr(sQ + qb * Br * D) + wg_row0 * 128;
    int entry[2] = {0, 0};  // kPast: the entries of this thread's rows (the epilogue's)
    if constexpr (PAST) {
#pragma unroll
      for (int h = 0; h < 2; ++h)
        if (row0 + 8 * h < item.count) entry[h] = __ldg(p.entries + item.ent0 + row0 + 8 * h);
    } else if (T::kStaged && p.kp <= T::kStageSlots) {
      // Copy this thread's merge inputs into its own shared-memory slots (layout [i][h][thread]
      // per 4 or 8 bytes: a warp's accesses are consecutive); the epilogue waits for them.
      const int ct = tid;  // consumer thread 0..255
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        if (row0 + 8 * h >= item.count) continue;
        const size_t row = static_cast<size_t>(tok[h]) * p.Hq + item.head;
        for (int i = 0; i < p.K; ++i)
          cp_async_ca<4>(stage_idx + (i * 2 + h) * 256 + ct, p.sel + row * p.K + i);
        if (p.part_o == nullptr) continue;  // no past block: no slot is valid
        for (int sl = 0; sl < p.kp; ++sl) {
          cp_async_ca<4>(stage_idx + ((T::kStageSlots + 1 + sl) * 2 + h) * 256 + ct,
                         p.part_lse + row * p.kp + sl);
          const float2* po = reinterpret_cast<const float2*>(p.part_o + (row * p.kp + sl) * D + 2 * qd);
#pragma unroll
          for (int x = 0; x < D / 8; ++x)
            cp_async_ca<8>(stage_po + ((sl * 2 + h) * (D / 8) + x) * 256 + ct, po + x * 4);
        }
      }
      detail::cp_async_commit();
    } else if (p.part_o != nullptr) {
      // The merge's inputs of this thread's rows (selection, partial lse, partial outputs:
      // kp * D * 4 bytes a row, one 128-byte line per lane of the quad in turn) are fetched
      // into L2 now, while the key tiles run: the epilogue then waits on L2, not on HBM.
      const int kp = p.kp;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        if (row0 + 8 * h >= item.count) continue;
        const size_t row = static_cast<size_t>(tok[h]) * p.Hq + item.head;
        const char* po = reinterpret_cast<const char*>(p.part_o + row * kp * D);
        for (int off = qd * 128; off < kp * D * 4; off += 4 * 128) prefetch_l2(po + off);
        if (qd == 0) prefetch_l2(p.part_lse + row * kp);
        if (qd == 1) prefetch_l2(p.sel + row * p.K);
      }
    }

    float o[D / 2];
#pragma unroll
    for (int x = 0; x < D / 2; ++x) o[x] = 0.f;
    float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};
    float s[Bc / 2];

    mbar_wait(&full_q[qb], q_par);
    // The key tiles (fwd_wgmma_step.cuh). Past blocks lie entirely before their queries: no
    // mask; kCurrent masks the diagonal (last) tile.
    for (int j = 0; j < item.n_tiles; ++j, ++ring)
      wgfwd_key_tile<D, Br, Bc, !PAST, PP>(q_addr, k_addr, v_addr, full_k, full_v, empty,
                                           ring % ST, (ring / ST) & 1, item.k_begin + j * Bc,
                                           item.first_tok + wg_row0, tok, qd, p.scale_log2, s, o,
                                           row_max, row_sum, PP ? wgi : 0);
    if (PP) wgfwd_pp_pass(wgi);  // the token, for the other's last P V
    // The last S MMA has read this item's Q rows: the buffer may be refilled (item qi + 2).
    mbar_arrive(&q_empty[qb]);

    // Epilogue. lse in natural log: (max * scale*log2e + log2 l) * ln 2.
    constexpr float kLn2 = 0.6931471805599453f;
    float lse[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float l = row_sum[h] + __shfl_xor_sync(0xffffffffu, row_sum[h], 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const float inv = l > 0.f ? 1.f / l : 0.f;
      lse[h] = l > 0.f ? fmaf(row_max[h], p.scale_log2, log2f(l)) * kLn2 : -INFINITY;
#pragma unroll
      for (int x = 0; x < D / 8; ++x) {
        o[4 * x + 2 * h] *= inv;
        o[4 * x + 2 * h + 1] *= inv;
      }
    }
    if constexpr (PAST) {
      // Normalised fp32 partial and lse of each row's entry.
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        if (row0 + 8 * h >= item.count) continue;
        float* dst = p.part_o + static_cast<size_t>(entry[h]) * D;
#pragma unroll
        for (int x = 0; x < D / 8; ++x)
          *reinterpret_cast<float2*>(dst + 8 * x + 2 * qd) =
              make_float2(o[4 * x + 2 * h], o[4 * x + 2 * h + 1]);
        if (qd == 0) p.part_lse[entry[h]] = lse[h];
      }
    } else if (T::kStaged && p.kp <= T::kStageSlots) {
      detail::cp_async_wait<0>();  // this thread's copies (it reads only its own)
      const int ct = tid;
      moba_merge_epilogue<D>(
          p, item, row0, tok, lse, o,
          [&](int h, int sl) { return stage_idx[(sl * 2 + h) * 256 + ct]; },
          [&](int h, int sl) {
            return __int_as_float(stage_idx[((T::kStageSlots + 1 + sl) * 2 + h) * 256 + ct]);
          },
          [&](int h, int sl, int x) { return stage_po[((sl * 2 + h) * (D / 8) + x) * 256 + ct]; });
    } else {
      const size_t rows[2] = {static_cast<size_t>(tok[0]) * p.Hq + item.head,
                              static_cast<size_t>(tok[1]) * p.Hq + item.head};
      const int qd2 = 2 * qd;
      moba_merge_epilogue<D>(
          p, item, row0, tok, lse, o,
          [&](int h, int sl) { return __ldg(p.sel + rows[h] * p.K + sl); },
          [&](int h, int sl) { return __ldg(p.part_lse + rows[h] * p.kp + sl); },
          [&](int h, int sl, int x) {
            return __ldg(reinterpret_cast<const float2*>(p.part_o + (rows[h] * p.kp + sl) * D + qd2) +
                         x * 4);
          });
    }
  }
#else
  // Built for a target without wgmma (not sm_90a): the launcher must not get here.
  __trap();
#endif
}

}  // namespace moba::attn::cuda
