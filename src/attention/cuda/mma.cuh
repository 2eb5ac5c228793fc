// Warp-level tensor-core helpers (sm_80+ instructions, used on Hopper too): the
// m16n8k16 bf16 MMA with fp32 accumulators, ldmatrix loads from shared memory, and
// cp.async copies from global memory. Inline PTX so that the fragment layouts are explicit.
//
// Fragment layouts of mma.m16n8k16 (g = lane / 4, q = lane % 4):
//   A (16x16, row-major), 4 regs of 2 bf16: a0 (g, 2q..2q+1), a1 (g+8, 2q..), a2 (g, 2q+8..),
//     a3 (g+8, 2q+8..).
//   B (16x8, "col"), 2 regs: b0 (k = 2q..2q+1, n = g), b1 (k = 2q+8.., n = g).
//   C (16x8) fp32, 4 regs: c0,c1 (g, 2q..2q+1), c2,c3 (g+8, 2q..2q+1).
// A C fragment pair over 16 consecutive columns is exactly an A fragment over k: this is
// how P (scores after softmax) feeds the P.V product straight from registers.
#pragma once

#include <cuda_bf16.h>
#include <cstdint>

namespace moba::attn::cuda::detail {

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// d += a * b on one 16x8x16 tile.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8x8 b16 matrices; lane l gives the row address of matrix l / 8.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}

// 16-byte global -> shared copy; src_bytes = 0 writes zeros (rows past the end of a
// sequence or of a gathered list are zero-filled, never read).
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
               "r"(src_bytes));
}
// 4-byte variant (per-row scalars: lse, delta, gather entries); src_bytes = 0 writes 0.
__device__ __forceinline__ void cp_async_4(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// Two fp32 adds to consecutive global addresses in one reduction (vector red is sm_90+):
// half the atomic instructions of dQ accumulation. Before sm_90 (the package's sm_80 code),
// two scalar atomics.
__device__ __forceinline__ void red_add_v2(float* p, float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(p), "f"(a), "f"(b) : "memory");
#else
  atomicAdd(p, a);
  atomicAdd(p + 1, b);
#endif
}

// One warp per (token, query head) row of the backward's preparation: returns
// delta = rowsum(dO o O) of the row (in every lane) and zeroes the row of the fp32 dQ
// accumulator.
template <int D>
__device__ __forceinline__ float warp_row_delta_zero_dq(const __nv_bfloat16* __restrict__ o,
                                                        const __nv_bfloat16* __restrict__ dout,
                                                        float* __restrict__ dq_acc, int row,
                                                        int lane) {
  constexpr int kPer = D / 32;  // 2 or 4 elements per lane
  const size_t at = static_cast<size_t>(row) * D + lane * kPer;
  const __nv_bfloat162* a = reinterpret_cast<const __nv_bfloat162*>(o + at);
  const __nv_bfloat162* b = reinterpret_cast<const __nv_bfloat162*>(dout + at);
  float acc = 0.f;
#pragma unroll
  for (int i = 0; i < kPer / 2; ++i) {
    const float2 x = __bfloat1622float2(a[i]), y = __bfloat1622float2(b[i]);
    acc += x.x * y.x + x.y * y.y;
  }
#pragma unroll
  for (int off = 16; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
#pragma unroll
  for (int i = 0; i < kPer; ++i) dq_acc[at + i] = 0.f;
  return acc;
}

}  // namespace moba::attn::cuda::detail
