// Dense causal flash-attention backward for Hopper (sm_90a): warpgroup MMAs fed by the
// bulk tensor copy engine (TMA) through an mbarrier ring, FA3-style, written here from the
// maths and the PTX ISA. Same contract as the dense path of bwd_kernel.cuh: dq, dk, dv
// (bf16), fp32 dQ accumulator converted afterwards (dq_acc holds dQ / scale), lse in
// natural log, softmax scale from the plan, GQA, varlen. COMPILE-ONLY so far (see
// docs/kernel_notes.md, "wgmma backward").
//
// CTA = 3 warpgroups and one tile of Bc = 128 keys of one (sequence, kv head); it walks
// every query tile that attends to them: for each query head of the kv group, query tiles
// of Br rows from the key tile's first token to the end of the sequence (Br = 64 at
// D = 128, 128 at D = 64).
//   warpgroups 0, 1 (consumers): keys 64w..64w+63 each (w = warpgroup). Per query tile,
//   with the key index as wgmma's M ("swapped" products, so that P^T and dS^T come out of
//   the MMAs in the layout of the next MMA's A operand):
//     S^T  = K_w Q^T        wgmma m64n{Br}k16 SS: A = K (K-major), B = Q (K-major)
//     dP^T = V_w dO^T       same with V, dO
//     P^T  = exp2(S^T * scale*log2e - lse*log2e)  (lse*log2e precomputed per row)
//     dS^T = P^T o (dP^T - delta)                  on the accumulator layout, masked
//                                                  (causal, rows past the sequence) on
//                                                  tiles that need it
//     dV  += P^T dO          wgmma m64n{D}k16 RS: A = P^T (registers, bf16), B = dO (MN-major)
//     dK  += dS^T Q          same with dS^T, Q; dK and dV stay in registers for the CTA
//     dS^T -> shared memory (bf16, 128-byte swizzle; two buffers, alternating)
//     dQ   = dS K            wgmma m64n64k16 SS with both operands MN-major (transposed):
//                            A = dS read from the dS^T tile, B = K; split between the
//                            warpgroups (D = 128: columns 64w..; D = 64: query rows 64w..)
//     dQ -> shared memory (fp32, swizzled boxes of 64 rows x 32 columns) -> TMA
//           reduce-add into the fp32 accumulator (cp.reduce.async.bulk.tensor).
//   warpgroup 2 (producer): one thread issues the TMA copies: K and V once, then for each
//   query tile Q, dO (D/64 boxes each) and the tile's lse*log2e and delta rows (from
//   transposed (Hq, N) copies written by the preparation kernel) into a ring of kStages
//   slots with full / empty mbarriers.
// Registers: setmaxnreg gives the producer 24 and each consumer thread 240.
//
// Varlen: the copies have no bounds of their own. A query box may run into the next
// sequence (real data) or past N (zero fill); a key box likewise. Masks by index make
// every such element contribute nothing: P^T = dS^T = 0 where key > query or where the
// query is past the sequence end, so dQ rows of queries past the end are exact zeros
// (the reduce-add into the next sequence's rows adds 0; rows past N are skipped by the
// copy engine), and dK / dV rows of keys past the end are never written.
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

template <int D>
__global__ void __launch_bounds__(384, 1)
    attn_bwd_wgmma_kernel(const __grid_constant__ CUtensorMap tm_q,
                          const __grid_constant__ CUtensorMap tm_k,
                          const __grid_constant__ CUtensorMap tm_v,
                          const __grid_constant__ CUtensorMap tm_do,
                          const __grid_constant__ CUtensorMap tm_lse,
                          const __grid_constant__ CUtensorMap tm_delta,
                          const __grid_constant__ CUtensorMap tm_dq, const AttnParams p) {
#if MOBA_WGMMA_ENABLED
  using namespace wg;
  using T = WgBwdTraits<D>;
  constexpr int Br = T::kBr, Bc = T::kBc, ST = T::kStages, CB = T::kColBlocks;
  extern __shared__ unsigned char smem_raw[];
  const uint32_t raw_addr = smem_addr(smem_raw);
  unsigned char* smem = smem_raw + ((1024 - (raw_addr & 1023)) & 1023);
  __nv_bfloat16* sK = reinterpret_cast<__nv_bfloat16*>(smem + T::kOffK);    // [CB][Bc][64]
  __nv_bfloat16* sV = reinterpret_cast<__nv_bfloat16*>(smem + T::kOffV);    // [CB][Bc][64]
  __nv_bfloat16* sQ = reinterpret_cast<__nv_bfloat16*>(smem + T::kOffQ);    // [ST][CB][Br][64]
  __nv_bfloat16* sdO = reinterpret_cast<__nv_bfloat16*>(smem + T::kOffDo);  // [ST][CB][Br][64]
  float* sLse = reinterpret_cast<float*>(smem + T::kOffLse);        // [ST][kRowBytes / 4]
  float* sDelta = reinterpret_cast<float*>(smem + T::kOffDelta);    // [ST][kRowBytes / 4]
  constexpr int RS = T::kRowBytes / 4;  // floats between ring slots of lse / delta
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + T::kOffBar);
  uint64_t* full_kv = bars;
  uint64_t* full = bars + 1;        // [ST]
  uint64_t* empty = bars + 1 + ST;  // [ST]

  // Key tile of this CTA: (kv head, tile n, sequence b); tile 0 (the most query tiles)
  // first, heads fastest below 64K tokens, as the mma.sync backward.
  const int b = blockIdx.z;
  const int kvh = p.heads_fastest ? blockIdx.x : blockIdx.y;
  const int n = p.heads_fastest ? blockIdx.y : blockIdx.x;
  const int seq_start = p.cu_seqlens[b], seq_end = p.cu_seqlens[b + 1];
  if (n * Bc >= seq_end - seq_start) return;  // the whole CTA leaves before any barrier
  const int key0 = seq_start + n * Bc;
  const int tiles = (seq_end - key0 + Br - 1) / Br;  // query tiles per head (>= 1)
  const int n_iter = tiles * p.group;                // iteration it: head it / tiles

  const int tid = threadIdx.x;
  const int wgi = tid / 128;
  if (tid == 0) {
    mbar_init(full_kv, 1);
    for (int s = 0; s < ST; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], 256);  // every consumer thread arrives once per use
    }
    mbar_fence_init();
  }
  __syncthreads();

  if (wgi == 2) {
    // ---------------- producer ----------------
    setmaxnreg_dec<T::kProducerRegs>();
    if (tid == 256) {
      tma_prefetch_desc(&tm_q);
      tma_prefetch_desc(&tm_k);
      tma_prefetch_desc(&tm_v);
      tma_prefetch_desc(&tm_do);
      tma_prefetch_desc(&tm_lse);
      tma_prefetch_desc(&tm_delta);
      mbar_arrive_expect_tx(full_kv, 2 * T::kKVBytes);
#pragma unroll
      for (int cb = 0; cb < CB; ++cb) {
        tma_load_3d(sK + cb * Bc * 64, &tm_k, cb * 64, kvh, key0, full_kv);
        tma_load_3d(sV + cb * Bc * 64, &tm_v, cb * 64, kvh, key0, full_kv);
      }
      for (int it = 0; it < n_iter; ++it) {
        const int s = it % ST;
        const int h = kvh * p.group + it / tiles;
        const int q0 = key0 + (it % tiles) * Br;
        mbar_wait(&empty[s], ((it / ST) & 1) ^ 1);  // parity 1 passes on a fresh barrier
        mbar_arrive_expect_tx(&full[s], T::kStageTx);
#pragma unroll
        for (int cb = 0; cb < CB; ++cb) {
          tma_load_3d(sQ + s * Br * D + cb * Br * 64, &tm_q, cb * 64, h, q0, &full[s]);
          tma_load_3d(sdO + s * Br * D + cb * Br * 64, &tm_do, cb * 64, h, q0, &full[s]);
        }
        tma_load_2d(sLse + s * RS, &tm_lse, q0 & ~3, h, &full[s]);  // 16-byte aligned start
        tma_load_2d(sDelta + s * RS, &tm_delta, q0 & ~3, h, &full[s]);
      }
    }
    return;
  }

  // ---------------- consumers ----------------
  setmaxnreg_inc<T::kConsumerRegs>();
  // Keys 64w..64w+63 of the tile. Read through a shuffle from lane 0 so that the compiler
  // knows it is warp-uniform: the descriptors built from it then live in uniform
  // registers instead of taking 16 of the consumers' registers.
  const int w = __shfl_sync(0xffffffffu, wgi, 0);
  const int wg_tid = tid % 128;
  const int lane = tid % 32, wi = wg_tid / 32;
  const int g = lane / 4, qd = lane % 4;
  const int kw0 = key0 + 64 * w;           // first key of this warpgroup
  const int krow0 = kw0 + 16 * wi + g;     // this thread's keys (accumulator rows): +0, +8

  const uint32_t k_addr = smem_addr(sK), v_addr = smem_addr(sV);
  const uint32_t q_addr = smem_addr(sQ), do_addr = smem_addr(sdO);
  const uint32_t ds_addr = smem_addr(smem + T::kOffDs);
  unsigned char* sDq = smem + T::kOffDq + w * T::kDqWgBytes;  // this warpgroup's boxes
  // dQ split: D = 128 (Br = 64): warpgroup w takes columns 64w..64w+63 of all 64 rows
  // (A = the whole dS^T tile, B = column block w of K); D = 64 (Br = 128): query rows
  // 64w..64w+63, all 64 columns (A = column block w of the dS^T tile, B = K).
  constexpr bool kSplitCols = D == 128;
  const uint32_t dq_a_off = kSplitCols ? 0u : static_cast<uint32_t>(w * Bc * 128);
  const uint32_t dq_b_off = kSplitCols ? static_cast<uint32_t>(w * Bc * 128) : 0u;
  const int dq_col0 = kSplitCols ? 64 * w : 0;
  const int dq_row_off = kSplitCols ? 0 : 64 * w;

  float dv[D / 2], dk[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) dv[i] = dk[i] = 0.f;

  if (wg_tid == 0) tma_prefetch_desc(&tm_dq);  // this thread issues the reduce-adds
  mbar_wait(full_kv, 0);
  for (int it = 0; it < n_iter; ++it) {
    const int s = it % ST;
    const uint32_t par = (it / ST) & 1;
    const int h = kvh * p.group + it / tiles;
    const int q0 = key0 + (it % tiles) * Br;  // first query token of the tile
    const uint32_t qs = q_addr + s * T::kQBytes, dos = do_addr + s * T::kQBytes;
    const float* lse_s = sLse + s * RS + (q0 & 3);  // the box started at q0 & ~3
    const float* dl_s = sDelta + s * RS + (q0 & 3);

    // S^T = K_w Q^T and dP^T = V_w dO^T (K-major A and B; k-step kk = column block kk/4,
    // +32 bytes per step inside the swizzled row), two groups.
    float st[Br / 2], dpt[Br / 2];
    mbar_wait(&full[s], par);
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

    // P^T on the accumulator layout: st[4i + 2hh + e] = (key krow0 + 8hh, query
    // q0 + 8i + 2qd + e). Masks: causal (key > query) and queries past the sequence end;
    // only tiles reaching past this warpgroup's first key or past the end need them.
    const bool need_mask = (kw0 + 63 > q0) || (q0 + Br > seq_end);
#pragma unroll
    for (int i = 0; i < Br / 8; ++i) {
      const float2 l = make_float2(lse_s[8 * i + 2 * qd], lse_s[8 * i + 2 * qd + 1]);
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        st[4 * i + 2 * hh] = exp2f(fmaf(st[4 * i + 2 * hh], p.scale_log2, -l.x));
        st[4 * i + 2 * hh + 1] = exp2f(fmaf(st[4 * i + 2 * hh + 1], p.scale_log2, -l.y));
      }
    }
    if (need_mask) {
#pragma unroll
      for (int i = 0; i < Br / 8; ++i)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const int qt = q0 + 8 * i + 2 * qd + (c & 1);
          const int kt = krow0 + 8 * (c >> 1);
          if (kt > qt || qt >= seq_end) st[4 * i + c] = 0.f;
        }
    }
    wgmma_wait<0>();  // dP^T done
    fence_regs(dpt);
    // dS^T = P^T o (dP^T - delta); masked entries have P^T = 0 exactly, so dS^T = 0.
#pragma unroll
    for (int i = 0; i < Br / 8; ++i) {
      const float2 dl = make_float2(dl_s[8 * i + 2 * qd], dl_s[8 * i + 2 * qd + 1]);
#pragma unroll
      for (int c = 0; c < 4; ++c)
        dpt[4 * i + c] = st[4 * i + c] * (dpt[4 * i + c] - ((c & 1) ? dl.y : dl.x));
    }
    // bf16 A fragments: k-step kk (queries 16kk..16kk+15) = accumulator columns
    // 16kk..16kk+15 = st[8kk..8kk+7] (as P in the forward).
    uint32_t pa[Br / 16][4], dsa[Br / 16][4];
#pragma unroll
    for (int kk = 0; kk < Br / 16; ++kk)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        pa[kk][j] = detail::pack_bf16(st[8 * kk + 2 * j], st[8 * kk + 2 * j + 1]);
        dsa[kk][j] = detail::pack_bf16(dpt[8 * kk + 2 * j], dpt[8 * kk + 2 * j + 1]);
      }

    // dV += P^T dO, dK += dS^T Q (B = dO, Q MN-major: 16 queries per k-step = 2 swizzle
    // atoms = 2048 bytes; LBO = next 64 columns of D = Br * 128 bytes). One group.
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

    // dS^T (bf16) into buffer it % 2 while those run: row = key (0..127 of the tile),
    // queries contiguous, 128B-swizzled in column blocks of 64 queries (Bc rows x 128
    // bytes each): element (r, c) at block c / 64, byte r*128 + ((c%64/8) ^ (r%8))*16 +
    // (c%8)*2. The register pair dsa[kk][j] = (row 64w + 16wi + g + 8(j&1), queries
    // 8i + 2qd, +1) with i = 2kk + j/2; r % 8 = g. A warp's 32 stores hit 32 banks.
    {
      unsigned char* buf = smem + T::kOffDs + (it & 1) * T::kDsBytes;
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
    fence_proxy_async();      // generic-proxy writes -> visible to wgmma (async proxy)
    named_bar_sync(1, 256);   // both warpgroups' dS^T rows are in buffer it % 2

    // dQ (64 x 64 of this warpgroup) = dS K over the 128 keys: A = dS (MN-major view of
    // the dS^T tile: M = queries contiguous, k-step = 16 key rows = 2048 bytes), B = K
    // (MN-major: N = D columns contiguous, k-step 2048 bytes). M and N are 64 = one
    // swizzle-span block, so LBO is not used (set to the next block's distance anyway).
    float dq[32];
    fence_regs(dq);
    wgmma_fence();
    {
      const uint32_t a_base = ds_addr + (it & 1) * T::kDsBytes + dq_a_off;
      const uint32_t b_base = k_addr + dq_b_off;
#pragma unroll
      for (int kk = 0; kk < Bc / 16; ++kk)
        wgmma_ss_tt<64>(dq, desc_mnmajor_sw128(a_base + kk * 2048, Bc * 128),
                        desc_mnmajor_sw128(b_base + kk * 2048, Bc * 128), kk > 0);
    }
    wgmma_commit();
    wgmma_wait<1>();          // dV / dK done: slot s (Q, dO, lse, delta) no longer read
    mbar_arrive(&empty[s]);
    wgmma_wait<0>();
    fence_regs(dq);

    // dQ -> two fp32 boxes of 64 rows x 32 columns, 128B-swizzled (the TMA map's
    // pattern: 16-byte chunk c of row r at c ^ (r % 8)); dq[4i + 2hh + e] = (row
    // 16wi + g + 8hh, column 8i + 2qd + e): box i / 4, chunk 2(i % 4) + qd / 2, +8 bytes
    // for odd qd. Then one thread adds the boxes into dq_acc (reduce-add, atomic per
    // element; rows past N skipped).
    if (wg_tid == 0) bulk_wait_read<0>();  // the previous tile's boxes have been read
    named_bar_sync(2 + w, 128);
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int r = 16 * wi + g + 8 * hh;
        const int chunk = 2 * (i % 4) + (qd >> 1);
        const int off = (i / 4) * T::kDqBoxBytes + r * 128 + ((chunk ^ g) << 4) + 8 * (qd & 1);
        *reinterpret_cast<float2*>(sDq + off) = make_float2(dq[4 * i + 2 * hh], dq[4 * i + 2 * hh + 1]);
      }
    fence_proxy_async();
    named_bar_sync(2 + w, 128);
    // Rows at or past the sequence end hold exact zeros: a box starting there (D = 64's
    // second half of a tile that ends the sequence) is not sent, which also keeps every
    // reduce-add at least partly inside the tensor.
    if (wg_tid == 0) {
      if (q0 + dq_row_off < seq_end) {
#pragma unroll
        for (int box = 0; box < 2; ++box)
          tma_reduce_add_3d(&tm_dq, dq_col0 + 32 * box, h, q0 + dq_row_off,
                            sDq + box * T::kDqBoxBytes);
      }
      bulk_commit();
    }
  }
  // The reductions must be complete (their shared-memory source alive) before the CTA
  // exits.
  if (wg_tid == 0) bulk_wait<0>();

  // Epilogue: dK carries the softmax scale (S = scale * Q K^T), dV does not (as the
  // mma.sync kernel); keys past the sequence end are not written.
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
#else
  // Built for a target without wgmma (not sm_90a): the launcher must not get here.
  __trap();
#endif
}

}  // namespace moba::attn::cuda
