// Device code shared by the two sm_90a warpgroup backwards: the dense one (bwd_wgmma.cuh)
// and the MoBA one (bwd_moba_wgmma.cuh). Both run the same CTA (3 warpgroups, one tile of
// Bc = 128 keys, two consumer warpgroups of 64 keys each, one producer warpgroup) and the
// same per-query-tile MMA sequence; they differ only in where the query tiles come from
// (and so in the masks and the dQ write). What is here is that common part, as
// force-inlined steps in the order a consumer runs them:
//   wgbwd_scores     S^T = K_w Q^T, dP^T = V_w dO^T (SS, two commit groups), wait S^T
//   wgbwd_probs      P^T = exp2(S^T * scale*log2e - lse*log2e), masked by a predicate
//   wgbwd_dsoftmax   wait dP^T; dS^T = P^T o (dP^T - delta); bf16 A fragments of both
//   wgbwd_dvdk       dV += P^T dO, dK += dS^T Q (RS, one commit group)
//   wgbwd_store_ds   dS^T (bf16) into a 128B-swizzled shared tile
//   wgbwd_dq_mma     dQ = dS K (SS, both operands MN-major, one commit group)
//   wgbwd_stage_dq   dQ (fp32) into the two 128B-swizzled boxes of the TMA reduce-add
//   wgbwd_epilogue   dK * scale, dV to bf16 (keys past the sequence end skipped)
// The layouts and the reasons for each choice are documented once, in bwd_wgmma.cuh
// (dense kernel) and wgmma.cuh (descriptors, fragments).
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>

#include <cmath>

#include "attention/cuda/mma.cuh"
#include "attention/cuda/params.h"
#include "attention/cuda/wgmma.cuh"

namespace moba::attn::cuda {

template <int D>
struct WgBwdTraits {
  static_assert(D == 64 || D == 128, "wgmma backward: head dim 64 or 128");
  static constexpr int kBc = 128;                // keys per CTA (2 consumer warpgroups)
  static constexpr int kBr = D == 64 ? 128 : 64; // query rows per tile
  static constexpr int kStages = 2;              // Q/dO ring depth
  static constexpr int kThreads = 384;           // 2 consumer + 1 producer warpgroups
  // setmaxnreg targets: as the forward (fwd_wgmma.cuh), the pool 128 x 24 + 256 x 240 =
  // 64512 = 384 x 168 must be there at launch (checked by the launcher).
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = 240;
  static constexpr int kRegPoolNeeded = 128 * kProducerRegs + 256 * kConsumerRegs;
  static_assert(kProducerRegs % 8 == 0 && kConsumerRegs % 8 == 0 && kProducerRegs >= 24 &&
                    kConsumerRegs <= 256,
                "setmaxnreg operand: multiple of 8 in [24, 256]");
  static_assert(kRegPoolNeeded <= 65536, "register file of one SM");
  static constexpr int kColBlocks = D / 64;         // 128-byte column blocks (TMA boxes)
  static constexpr int kKVBytes = kBc * D * 2;      // the K (or V) tile
  static constexpr int kQBytes = kBr * D * 2;       // one Q (or dO) tile
  // lse (or delta) of one query tile. The 2-d TMA box's start must be 16-byte aligned in
  // its innermost (token) dimension (measured: an unaligned start is an illegal
  // instruction), so the box starts at q0 rounded down to 4 tokens and is 4 tokens longer;
  // the consumers read from offset q0 % 4.
  static constexpr int kRowBox = kBr + 4;                      // tokens per box
  static constexpr int kRowBytes = (kRowBox * 4 + 127) / 128 * 128;  // smem slot stride
  static constexpr int kStageTx = 2 * kQBytes + 2 * kRowBox * 4;  // bytes per ring slot
  static constexpr int kDsBytes = kBc * kBr * 2;    // one dS^T buffer (bf16)
  // dQ staging: per consumer warpgroup 64 rows x 64 fp32 columns as two boxes of 32
  // columns (128 bytes, the 128B swizzle span) x 64 rows.
  static constexpr int kDqBoxBytes = 64 * 128;
  static constexpr int kDqWgBytes = 2 * kDqBoxBytes;
  // Shared-memory map (bytes from the 1024-aligned base); every swizzled tile starts on
  // 1024 bytes.
  static constexpr int kOffK = 0;
  static constexpr int kOffV = kOffK + kKVBytes;
  static constexpr int kOffQ = kOffV + kKVBytes;               // [kStages]
  static constexpr int kOffDo = kOffQ + kStages * kQBytes;     // [kStages]
  static constexpr int kOffDs = kOffDo + kStages * kQBytes;    // [2]
  static constexpr int kOffDq = kOffDs + 2 * kDsBytes;         // [2 warpgroups]
  static constexpr int kOffLse = kOffDq + 2 * kDqWgBytes;      // [kStages][kBr] fp32
  static constexpr int kOffDelta = kOffLse + kStages * kRowBytes;
  static constexpr int kOffBar = kOffDelta + kStages * kRowBytes;
  static constexpr int kNumBars = 1 + 2 * kStages;  // full_kv, full[ST], empty[ST]
  static_assert(kOffDq % 1024 == 0 && kOffLse % 1024 == 0 && kRowBytes % 128 == 0,
                "alignment of swizzled tiles (1024) and TMA destinations (128)");
  // +1024: the dynamic shared-memory base is aligned up to 1024 bytes in the kernel.
  static constexpr int kSmemBytes = 1024 + kOffBar + 8 * kNumBars;
  static_assert(kSmemBytes <= 227 * 1024, "shared memory");
};

#if MOBA_WGMMA_ENABLED
// The CTA's shared memory (WgBwdTraits' map from the 1024-aligned base) and its mbarriers.
template <int D>
struct WgBwdSmem {
  using T = WgBwdTraits<D>;
  unsigned char* base;          // 1024-aligned
  __nv_bfloat16* sK;            // [CB][Bc][64]
  __nv_bfloat16* sV;            // [CB][Bc][64]
  __nv_bfloat16* sQ;            // [ST][CB][Br][64]
  __nv_bfloat16* sdO;           // [ST][CB][Br][64]
  float* sLse;                  // [ST][kRowBytes / 4]
  float* sDelta;                // [ST][kRowBytes / 4]
  uint64_t* full_kv;
  uint64_t* full;               // [ST]
  uint64_t* empty;              // [ST]
  static constexpr int kRS = T::kRowBytes / 4;  // floats between ring slots of lse / delta
  __device__ __forceinline__ explicit WgBwdSmem(unsigned char* raw) {
    base = raw + ((1024 - (wg::smem_addr(raw) & 1023)) & 1023);
    sK = reinterpret_cast<__nv_bfloat16*>(base + T::kOffK);
    sV = reinterpret_cast<__nv_bfloat16*>(base + T::kOffV);
    sQ = reinterpret_cast<__nv_bfloat16*>(base + T::kOffQ);
    sdO = reinterpret_cast<__nv_bfloat16*>(base + T::kOffDo);
    sLse = reinterpret_cast<float*>(base + T::kOffLse);
    sDelta = reinterpret_cast<float*>(base + T::kOffDelta);
    full_kv = reinterpret_cast<uint64_t*>(base + T::kOffBar);
    full = full_kv + 1;
    empty = full_kv + 1 + T::kStages;
  }
  // Thread 0: full_kv (1 arrival + tx), full[s] (full_count arrivals + tx), empty[s] (every
  // consumer thread once per use); then the whole CTA synchronises.
  __device__ __forceinline__ void init_barriers(uint32_t full_count) const {
    if (threadIdx.x == 0) {
      wg::mbar_init(full_kv, 1);
      for (int s = 0; s < T::kStages; ++s) {
        wg::mbar_init(&full[s], full_count);
        wg::mbar_init(&empty[s], 256);
      }
      wg::mbar_fence_init();
    }
    __syncthreads();
  }
  // One producer thread: prefetch of the load maps, then the K and V tiles of the keys
  // key0.. of kv head kvh on full_kv (D/64 boxes each).
  __device__ __forceinline__ void load_kv(const CUtensorMap* tm_q, const CUtensorMap* tm_k,
                                          const CUtensorMap* tm_v, const CUtensorMap* tm_do,
                                          const CUtensorMap* tm_lse,
                                          const CUtensorMap* tm_delta, int kvh,
                                          int key0) const {
    using namespace wg;
    tma_prefetch_desc(tm_q);
    tma_prefetch_desc(tm_k);
    tma_prefetch_desc(tm_v);
    tma_prefetch_desc(tm_do);
    tma_prefetch_desc(tm_lse);
    tma_prefetch_desc(tm_delta);
    mbar_arrive_expect_tx(full_kv, 2 * T::kKVBytes);
#pragma unroll
    for (int cb = 0; cb < T::kColBlocks; ++cb) {
      tma_load_3d(sK + cb * T::kBc * 64, tm_k, cb * 64, kvh, key0, full_kv);
      tma_load_3d(sV + cb * T::kBc * 64, tm_v, cb * 64, kvh, key0, full_kv);
    }
  }
  // One producer thread: the contiguous query tile q0.. of head h (Q, dO boxes; lse * log2e
  // and delta boxes from the transposed arrays, started at q0 & ~3 so that the box start is
  // 16-byte aligned) into ring slot s: arrive.expect_tx with the boxes' bytes (zero fill
  // included), then the copies.
  __device__ __forceinline__ void load_tile(const CUtensorMap* tm_q, const CUtensorMap* tm_do,
                                            const CUtensorMap* tm_lse,
                                            const CUtensorMap* tm_delta, int s, int h,
                                            int q0) const {
    using namespace wg;
    constexpr int Br = T::kBr;
    mbar_arrive_expect_tx(&full[s], T::kStageTx);
#pragma unroll
    for (int cb = 0; cb < T::kColBlocks; ++cb) {
      tma_load_3d(sQ + s * Br * D + cb * Br * 64, tm_q, cb * 64, h, q0, &full[s]);
      tma_load_3d(sdO + s * Br * D + cb * Br * 64, tm_do, cb * 64, h, q0, &full[s]);
    }
    tma_load_2d(sLse + s * kRS, tm_lse, q0 & ~3, h, &full[s]);
    tma_load_2d(sDelta + s * kRS, tm_delta, q0 & ~3, h, &full[s]);
  }
};

// A consumer thread's place: warpgroup w (keys 64w..64w+63 of the tile), its fragment
// coordinates, the shared-memory addresses of the operands, and the dQ split: D = 128
// (Br = 64): warpgroup w takes columns 64w..64w+63 of all 64 rows (A = the whole dS^T
// tile, B = column block w of K); D = 64 (Br = 128): query rows 64w..64w+63, all 64
// columns (A = column block w of the dS^T tile, B = K).
template <int D>
struct WgBwdConsumer {
  using T = WgBwdTraits<D>;
  static constexpr bool kSplitCols = D == 128;
  int w, wg_tid, wi, g, qd, kw0, krow0;
  uint32_t k_addr, v_addr, q_addr, do_addr, ds_addr, dq_a_off, dq_b_off;
  unsigned char* sDq;  // this warpgroup's dQ boxes
  int dq_col0, dq_row_off;
  __device__ __forceinline__ WgBwdConsumer(const WgBwdSmem<D>& sm, int key0) {
    using namespace wg;
    const int tid = threadIdx.x;
    // Read through a shuffle from lane 0 so that the compiler knows it is warp-uniform:
    // the descriptors built from it then live in uniform registers instead of taking 16
    // of the consumers' registers.
    w = __shfl_sync(0xffffffffu, tid / 128, 0);
    wg_tid = tid % 128;
    const int lane = tid % 32;
    wi = wg_tid / 32;
    g = lane / 4;
    qd = lane % 4;
    kw0 = key0 + 64 * w;         // first key of this warpgroup
    krow0 = kw0 + 16 * wi + g;   // this thread's keys (accumulator rows): +0, +8
    k_addr = smem_addr(sm.sK);
    v_addr = smem_addr(sm.sV);
    q_addr = smem_addr(sm.sQ);
    do_addr = smem_addr(sm.sdO);
    ds_addr = smem_addr(sm.base + T::kOffDs);
    sDq = sm.base + T::kOffDq + w * T::kDqWgBytes;
    dq_a_off = kSplitCols ? 0u : static_cast<uint32_t>(w * T::kBc * 128);
    dq_b_off = kSplitCols ? static_cast<uint32_t>(w * T::kBc * 128) : 0u;
    dq_col0 = kSplitCols ? 64 * w : 0;
    dq_row_off = kSplitCols ? 0 : 64 * w;
  }
};

// S^T = K_w Q^T and dP^T = V_w dO^T (K-major A and B; k-step kk = column block kk/4,
// +32 bytes per step inside the swizzled row), two commit groups; returns once S^T is
// complete (dP^T may still run). k_addr / v_addr: the K / V tiles, qs / dos: this ring
// slot's Q / dO tiles, w: this consumer warpgroup (keys 64w..64w+63 of the tile).
template <int D>
__device__ __forceinline__ void wgbwd_scores(float (&st)[WgBwdTraits<D>::kBr / 2],
                                             float (&dpt)[WgBwdTraits<D>::kBr / 2],
                                             uint32_t k_addr, uint32_t v_addr, uint32_t qs,
                                             uint32_t dos, int w) {
  using namespace wg;
  constexpr int Br = WgBwdTraits<D>::kBr, Bc = WgBwdTraits<D>::kBc;
  fence_regs(st);
  fence_regs(dpt);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint32_t off = (kk % 4) * 32;
    const uint64_t da = desc_kmajor_sw128(k_addr + (kk / 4) * (Bc * 128) + w * 64 * 128 + off);
    const uint64_t db = desc_kmajor_sw128(qs + (kk / 4) * (Br * 128) + off);
    wgmma_ss<Br>(st, da, db, kk > 0);
  }
  wgmma_commit();
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint32_t off = (kk % 4) * 32;
    const uint64_t da = desc_kmajor_sw128(v_addr + (kk / 4) * (Bc * 128) + w * 64 * 128 + off);
    const uint64_t db = desc_kmajor_sw128(dos + (kk / 4) * (Br * 128) + off);
    wgmma_ss<Br>(dpt, da, db, kk > 0);
  }
  wgmma_commit();
  wgmma_wait<1>();  // S^T done; dP^T may still run
  fence_regs(st);
}

// P^T on the accumulator layout: st[4i + 2hh + e] = (key row 16wi + g + 8hh of the
// warpgroup, query column 8i + 2qd + e of the tile). lse_s: the tile's lse * log2(e),
// indexed by query column. Where need_mask, entries with masked(i, c) true (c = 2hh + e)
// are set to exactly 0 (so dS^T = 0 there too, given finite dP^T and delta).
template <int Br, class Masked>
__device__ __forceinline__ void wgbwd_probs(float (&st)[Br / 2], const float* lse_s,
                                            float scale_log2, int qd, bool need_mask,
                                            Masked masked) {
#pragma unroll
  for (int i = 0; i < Br / 8; ++i) {
    const float2 l = make_float2(lse_s[8 * i + 2 * qd], lse_s[8 * i + 2 * qd + 1]);
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      st[4 * i + 2 * hh] = exp2f(fmaf(st[4 * i + 2 * hh], scale_log2, -l.x));
      st[4 * i + 2 * hh + 1] = exp2f(fmaf(st[4 * i + 2 * hh + 1], scale_log2, -l.y));
    }
  }
  if (need_mask) {
#pragma unroll
    for (int i = 0; i < Br / 8; ++i)
#pragma unroll
      for (int c = 0; c < 4; ++c)
        if (masked(i, c)) st[4 * i + c] = 0.f;
  }
}

// Waits for dP^T, then dS^T = P^T o (dP^T - delta) (masked entries have P^T = 0 exactly,
// so dS^T = 0), and the bf16 A fragments of the RS MMAs: k-step kk (queries 16kk..16kk+15)
// = accumulator columns 16kk..16kk+15 = st[8kk..8kk+7] (as P in the forward).
template <int Br>
__device__ __forceinline__ void wgbwd_dsoftmax(float (&st)[Br / 2], float (&dpt)[Br / 2],
                                               const float* dl_s, int qd,
                                               uint32_t (&pa)[Br / 16][4],
                                               uint32_t (&dsa)[Br / 16][4]) {
  using namespace wg;
  wgmma_wait<0>();  // dP^T done
  fence_regs(dpt);
#pragma unroll
  for (int i = 0; i < Br / 8; ++i) {
    const float2 dl = make_float2(dl_s[8 * i + 2 * qd], dl_s[8 * i + 2 * qd + 1]);
#pragma unroll
    for (int c = 0; c < 4; ++c)
      dpt[4 * i + c] = st[4 * i + c] * (dpt[4 * i + c] - ((c & 1) ? dl.y : dl.x));
  }
#pragma unroll
  for (int kk = 0; kk < Br / 16; ++kk)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      pa[kk][j] = detail::pack_bf16(st[8 * kk + 2 * j], st[8 * kk + 2 * j + 1]);
      dsa[kk][j] = detail::pack_bf16(dpt[8 * kk + 2 * j], dpt[8 * kk + 2 * j + 1]);
    }
}

// dV += P^T dO, dK += dS^T Q (B = dO, Q MN-major: 16 queries per k-step = 2 swizzle
// atoms = 2048 bytes; LBO = next 64 columns of D = Br * 128 bytes). One commit group.
template <int D>
__device__ __forceinline__ void wgbwd_dvdk(float (&dv)[D / 2], float (&dk)[D / 2],
                                           const uint32_t (&pa)[WgBwdTraits<D>::kBr / 16][4],
                                           const uint32_t (&dsa)[WgBwdTraits<D>::kBr / 16][4],
                                           uint32_t qs, uint32_t dos) {
  using namespace wg;
  constexpr int Br = WgBwdTraits<D>::kBr;
  fence_regs(dv);
  fence_regs(dk);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < Br / 16; ++kk)
    wgmma_rs<D>(dv, pa[kk], desc_mnmajor_sw128(dos + kk * 2048, Br * 128), 1);
#pragma unroll
  for (int kk = 0; kk < Br / 16; ++kk)
    wgmma_rs<D>(dk, dsa[kk], desc_mnmajor_sw128(qs + kk * 2048, Br * 128), 1);
  wgmma_commit();
}

// dS^T (bf16) into `buf`: row = key (0..127 of the tile), queries contiguous,
// 128B-swizzled in column blocks of 64 queries (Bc rows x 128 bytes each): element (r, c)
// at block c / 64, byte r*128 + ((c%64/8) ^ (r%8))*16 + (c%8)*2. The register pair
// dsa[kk][j] = (row 64w + 16wi + g + 8(j&1), queries 8i + 2qd, +1) with i = 2kk + j/2;
// r % 8 = g. A warp's 32 stores hit 32 banks.
template <int Br, int Bc>
__device__ __forceinline__ void wgbwd_store_ds(unsigned char* buf,
                                               const uint32_t (&dsa)[Br / 16][4], int w, int wi,
                                               int g, int qd) {
  const int r0 = 64 * w + 16 * wi + g;
#pragma unroll
  for (int kk = 0; kk < Br / 16; ++kk)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int i = 2 * kk + (j >> 1);
      const int r = r0 + 8 * (j & 1);
      const int off = (i / 8) * (Bc * 128) + r * 128 + (((i & 7) ^ g) << 4) + 4 * qd;
      *reinterpret_cast<uint32_t*>(buf + off) = dsa[kk][j];
    }
}

// dQ (64 x 64 of this warpgroup) = dS K over the 128 keys: A = dS (MN-major view of the
// dS^T tile: M = queries contiguous, k-step = 16 key rows = 2048 bytes), B = K (MN-major:
// N = D columns contiguous, k-step 2048 bytes). M and N are 64 = one swizzle-span block,
// so LBO is not used (set to the next block's distance anyway). One commit group.
template <int Bc>
__device__ __forceinline__ void wgbwd_dq_mma(float (&dq)[32], uint32_t a_base, uint32_t b_base) {
  using namespace wg;
  fence_regs(dq);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < Bc / 16; ++kk)
    wgmma_ss_tt<64>(dq, desc_mnmajor_sw128(a_base + kk * 2048, Bc * 128),
                    desc_mnmajor_sw128(b_base + kk * 2048, Bc * 128), kk > 0);
  wgmma_commit();
}

// dQ -> two fp32 boxes of 64 rows x 32 columns, 128B-swizzled (the TMA map's pattern:
// 16-byte chunk c of row r at c ^ (r % 8)); dq[4i + 2hh + e] = (row 16wi + g + 8hh,
// column 8i + 2qd + e): box i / 4, chunk 2(i % 4) + qd / 2, +8 bytes for odd qd.
template <int DqBoxBytes>
__device__ __forceinline__ void wgbwd_stage_dq(unsigned char* sDq, const float (&dq)[32], int wi,
                                               int g, int qd) {
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int r = 16 * wi + g + 8 * hh;
      const int chunk = 2 * (i % 4) + (qd >> 1);
      const int off = (i / 4) * DqBoxBytes + r * 128 + ((chunk ^ g) << 4) + 8 * (qd & 1);
      *reinterpret_cast<float2*>(sDq + off) = make_float2(dq[4 * i + 2 * hh], dq[4 * i + 2 * hh + 1]);
    }
}

// dQ of a contiguous query tile (rows row0.. of head h, columns col0..col0+63) into the
// fp32 accumulator: the two swizzled boxes of this warpgroup, then one thread (wg_tid 0)
// reduce-adds them (atomic per element; rows past N skipped) unless `send` is false (the
// rows start at or past the end: they hold exact zeros). The previous tile's boxes must
// have been read before they are overwritten (bulk_wait_read + the warpgroup barrier).
template <int D>
__device__ __forceinline__ void wgbwd_dq_reduce_add(const WgBwdConsumer<D>& c, const float (&dq)[32],
                                                    const CUtensorMap* tm_dq, int h, int row0,
                                                    bool send) {
  using namespace wg;
  constexpr int kBox = WgBwdTraits<D>::kDqBoxBytes;
  if (c.wg_tid == 0) bulk_wait_read<0>();  // the previous tile's boxes have been read
  named_bar_sync(2 + c.w, 128);
  wgbwd_stage_dq<kBox>(c.sDq, dq, c.wi, c.g, c.qd);
  fence_proxy_async();
  named_bar_sync(2 + c.w, 128);
  if (c.wg_tid == 0) {
    if (send) {
#pragma unroll
      for (int box = 0; box < 2; ++box)
        tma_reduce_add_3d(tm_dq, c.dq_col0 + 32 * box, h, row0, c.sDq + box * kBox);
    }
    bulk_commit();
  }
}

// Epilogue: dK carries the softmax scale (S = scale * Q K^T), dV does not (as the
// mma.sync kernel); keys at or past seq_end are not written. krow0: this thread's first
// key (accumulator row g of its warp), the second is krow0 + 8.
template <int D>
__device__ __forceinline__ void wgbwd_epilogue(float (&dv)[D / 2], float (&dk)[D / 2],
                                               const AttnParams& p, int krow0, int seq_end,
                                               int kvh, int qd) {
  using namespace wg;
  fence_regs(dv);
  fence_regs(dk);
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    const int key = krow0 + 8 * hh;
    if (key >= seq_end) continue;
    const size_t row = (static_cast<size_t>(key) * p.Hkv + kvh) * D + 2 * qd;
#pragma unroll
    for (int i = 0; i < D / 8; ++i) {
      *reinterpret_cast<uint32_t*>(p.dk + row + 8 * i) =
          detail::pack_bf16(dk[4 * i + 2 * hh] * p.scale, dk[4 * i + 2 * hh + 1] * p.scale);
      *reinterpret_cast<uint32_t*>(p.dv + row + 8 * i) =
          detail::pack_bf16(dv[4 * i + 2 * hh], dv[4 * i + 2 * hh + 1]);
    }
  }
}
#endif  // MOBA_WGMMA_ENABLED

}  // namespace moba::attn::cuda
