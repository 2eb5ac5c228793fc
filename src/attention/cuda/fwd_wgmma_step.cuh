// Device code shared by the sm_90a warpgroup forwards: the dense one (fwd_wgmma.cuh) and
// the two MoBA ones (fwd_moba_wgmma.cuh). All run the same CTA (3 warpgroups; two consumer
// warpgroups of 64 query rows, one producer) over the same K/V ring, and the same
// per-key-tile sequence; they differ in where the rows and key ranges come from (one tile
// per CTA from blockIdx, or persistent work items), in how Q arrives and in the epilogue.
// What is here is that common part, as force-inlined steps:
//   wgfwd_init_ring  the K/V ring's barriers (one thread, before the CTA's first sync)
//   wgfwd_load_kv    producer: K and V of one key tile into the next ring slot
//   wgfwd_key_tile   consumer: S = Q K^T, causal mask, online softmax, O += P V, slot freed
// Both take the ring position (slot and parity) from a running key-tile count the caller
// keeps, so that each kernel keeps its own bookkeeping: the dense kernel's comes from the
// loop counter (uniform registers; moving it into per-thread state cost 5-8%, see
// docs/kernel_notes.md, "v12" and "v15"). The layouts are documented in fwd_wgmma.cuh and
// wgmma.cuh.
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>

#include <cmath>

#include "attention/cuda/mma.cuh"
#include "attention/cuda/wgmma.cuh"

namespace moba::attn::cuda {

// The barriers of the K/V ring's ST slots: full_k, full_v (one arrival: the producer's
// arrive.expect_tx; then the TMA bytes) and empty (256 arrivals: every consumer thread once
// per use, in wgfwd_key_tile). The caller fences the inits (mbar_fence_init) and syncs.
template <int ST>
__device__ __forceinline__ void wgfwd_init_ring(uint64_t* full_k, uint64_t* full_v, uint64_t* empty) {
  using namespace wg;
  for (int s = 0; s < ST; ++s) {
    mbar_init(&full_k[s], 1);
    mbar_init(&full_v[s], 1);
    mbar_init(&empty[s], 256);  // every consumer thread arrives once per use
  }
}

// K and V of the key tile at token kt (kv head kvh) into ring slot n % ST, the n-th tile
// issued: waits until both consumer warpgroups freed the slot's previous use (parity 1 on
// a fresh barrier passes at once, so the first ST tiles do not wait), then arms the slot's
// full barriers with the byte counts and issues the TMA copies (D/64 boxes of Bc rows
// each). One producer thread calls it.
template <int D, int Bc, int ST>
__device__ __forceinline__ void wgfwd_load_kv(int& n, __nv_bfloat16* sK, __nv_bfloat16* sV,
                                              uint64_t* full_k, uint64_t* full_v, uint64_t* empty,
                                              const CUtensorMap* tm_k, const CUtensorMap* tm_v,
                                              int kvh, int kt) {
  using namespace wg;
  constexpr int CB = D / 64, kTileBytes = Bc * D * 2;
  const int s = n % ST;
  mbar_wait(&empty[s], ((n / ST) & 1) ^ 1);
  ++n;
  __nv_bfloat16* k_dst = sK + s * Bc * D;
  __nv_bfloat16* v_dst = sV + s * Bc * D;
  mbar_arrive_expect_tx(&full_k[s], kTileBytes);
#pragma unroll
  for (int cb = 0; cb < CB; ++cb) tma_load_3d(k_dst + cb * Bc * 64, tm_k, cb * 64, kvh, kt, &full_k[s]);
  mbar_arrive_expect_tx(&full_v[s], kTileBytes);
#pragma unroll
  for (int cb = 0; cb < CB; ++cb) tma_load_3d(v_dst + cb * Bc * 64, tm_v, cb * 64, kvh, kt, &full_v[s]);
}

// One key tile of a consumer warpgroup (64 query rows of a tile of Br):
//   S = Q K^T   wgmma m64n128k16 SS (Q and K K-major, 128B swizzle; k-step kk = column
//               block kk/4, +32 bytes per step inside the 128-byte row), D/16 k-steps;
//   mask        (MASK) causal, only on a tile reaching past the warpgroup's first row
//               mask_row (the diagonal tile): key kt + col > tok[h] is -inf;
//   softmax     online, on the accumulator layout (a row = one quad: 2 shuffles), raw
//               scores with scale*log2e folded into the exponent's FMA;
//   O += P V    P packed to bf16 A fragments, wgmma m64nDk16 RS (V MN-major: 16 keys per
//               k-step = 2 swizzle atoms = 2048 bytes), Bc/16 k-steps;
//   then the thread arrives on the slot's empty barrier (K and V consumed).
// q_addr: this warpgroup's Q rows (shared address); k_addr / v_addr: ring slot 0 of K / V;
// st, par: the ring slot and the full barriers' parity of this tile. s is the scores'
// register array, kept by the caller across tiles (as are o, row_max, row_sum).
// PP (MOBA_FWD_PINGPONG=1; docs/kernel_notes.md, "v20"): FA3's ping-pong of the two
// consumer warpgroups. Named barriers kPingPongBar + w (w the warpgroup) pass a token: a
// warpgroup issues its MMAs [O += P V of this tile, then S = Q K^T of the next] only while
// it holds the token, and passes it as soon as S is issued, so that its softmax runs while
// the other warpgroup's MMAs do. The protocol, the same in every forward kernel: warpgroup
// 0 gets the first token once (wgfwd_pp_first_token); around each work item's key tiles a
// warpgroup takes the token before the first (wgfwd_pp_take) and passes it after its last
// O += P V (wgfwd_pp_pass), before its epilogue. Per item each barrier sees n + 1 syncs and
// n + 1 arrival groups; the first token leaves one arrival group (warpgroup 1's last pass)
// pending on barrier kPingPongBar when the CTA exits, as in FA3. Both warpgroups must run
// the same items and tiles.
constexpr int kPingPongBar = 3;  // ids 3 and 4 (0 is __syncthreads)

__device__ __forceinline__ void wgfwd_pp_first_token(int wg) {
  if (wg == 0) wg::named_bar_arrive(kPingPongBar, 256);
}
__device__ __forceinline__ void wgfwd_pp_take(int wg) { wg::named_bar_sync(kPingPongBar + wg, 256); }
__device__ __forceinline__ void wgfwd_pp_pass(int wg) {
  wg::named_bar_arrive(kPingPongBar + (1 - wg), 256);
}

template <int D, int Br, int Bc, bool MASK, bool PP = false>
__device__ __forceinline__ void wgfwd_key_tile(uint32_t q_addr, uint32_t k_addr, uint32_t v_addr,
                                               uint64_t* full_k, uint64_t* full_v, uint64_t* empty,
                                               int st, uint32_t par, int kt, int mask_row,
                                               const int (&tok)[2], int qd, float scale_log2,
                                               float (&s)[Bc / 2], float (&o)[D / 2],
                                               float (&row_max)[2], float (&row_sum)[2],
                                               int pp_wg = 0) {
  using namespace wg;
  constexpr int kTileBytes = Bc * D * 2;
  // S = Q K^T.
  mbar_wait(&full_k[st], par);
  fence_regs(s);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint32_t off = (kk % 4) * 32;  // k-step inside the 128-byte row
    const uint64_t da = desc_kmajor_sw128(q_addr + (kk / 4) * (Br * 128) + off);
    const uint64_t db = desc_kmajor_sw128(k_addr + st * kTileBytes + (kk / 4) * (Bc * 128) + off);
    wgmma_ss<Bc>(s, da, db, kk > 0);
  }
  wgmma_commit();
  if (PP) wgfwd_pp_pass(pp_wg);  // the other warpgroup's turn
  wgmma_wait<0>();
  fence_regs(s);

  // Causal mask: only the diagonal tile reaches past this warpgroup's first row.
  if (MASK && kt + Bc - 1 > mask_row) {
#pragma unroll
    for (int i = 0; i < Bc / 8; ++i)
#pragma unroll
      for (int c = 0; c < 4; ++c)
        if (kt + 8 * i + 2 * qd + (c & 1) > tok[c / 2]) s[4 * i + c] = -INFINITY;
  }

  // Online softmax (raw scores; scale*log2e folded into the exponent's FMA).
  fence_regs(o);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float mx = -INFINITY;
#pragma unroll
    for (int i = 0; i < Bc / 8; ++i) mx = fmaxf(mx, fmaxf(s[4 * i + 2 * h], s[4 * i + 2 * h + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(row_max[h], mx);
    const float m_use = __fmul_rn(m_new == -INFINITY ? 0.f : m_new, scale_log2);
    const float alpha =  // see fwd_kernel.cuh
        m_new == row_max[h] ? 1.f : exp2f(__fmul_rn(row_max[h], scale_log2) - m_use);
    row_max[h] = m_new;
    row_sum[h] *= alpha;
#pragma unroll
    for (int i = 0; i < D / 8; ++i) {
      o[4 * i + 2 * h] *= alpha;
      o[4 * i + 2 * h + 1] *= alpha;
    }
#pragma unroll
    for (int i = 0; i < Bc / 8; ++i) {
      s[4 * i + 2 * h] = exp2f(fmaf(s[4 * i + 2 * h], scale_log2, -m_use));
      s[4 * i + 2 * h + 1] = exp2f(fmaf(s[4 * i + 2 * h + 1], scale_log2, -m_use));
      row_sum[h] += s[4 * i + 2 * h] + s[4 * i + 2 * h + 1];
    }
  }
  // P (bf16) in the A-fragment layout: k-step kk = accumulator columns 16kk..16kk+15.
  uint32_t pa[Bc / 16][4];
#pragma unroll
  for (int kk = 0; kk < Bc / 16; ++kk) {
    pa[kk][0] = detail::pack_bf16(s[8 * kk + 0], s[8 * kk + 1]);
    pa[kk][1] = detail::pack_bf16(s[8 * kk + 2], s[8 * kk + 3]);
    pa[kk][2] = detail::pack_bf16(s[8 * kk + 4], s[8 * kk + 5]);
    pa[kk][3] = detail::pack_bf16(s[8 * kk + 6], s[8 * kk + 7]);
  }

  // O += P V.
  mbar_wait(&full_v[st], par);
  if (PP) wgfwd_pp_take(pp_wg);  // this warpgroup's turn again
  fence_regs(o);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < Bc / 16; ++kk) {
    const uint64_t db = desc_mnmajor_sw128(v_addr + st * kTileBytes + kk * 2048, Bc * 128);
    wgmma_rs<D>(o, pa[kk], db, 1);
  }
  wgmma_commit();
  wgmma_wait<0>();
  fence_regs(o);
  mbar_arrive(&empty[st]);  // this thread is done with slot st (K and V)
}

}  // namespace moba::attn::cuda
