// Hopper (sm_90a) building blocks for the warpgroup flash-attention forward and backward
// (fwd_wgmma.cuh, bwd_wgmma.cuh): warpgroup MMAs (wgmma.mma_async), their shared-memory matrix
// descriptors, mbarriers, bulk tensor copies (TMA) and setmaxnreg. Inline PTX, written
// from the PTX ISA (section names quoted below), so that every layout is explicit.
//
// Everything here needs sm_90a (wgmma, setmaxnreg) or sm_90 (mbarrier tx-count, TMA).
// MOBA_WGMMA_ENABLED is 1 only in the device pass for the sm_90a target; elsewhere the
// helpers compile to nothing (or a trap), so that other targets still build.
//
// ---------------------------------------------------------------------------------------
// Layouts used by the kernel (PTX ISA, "Asynchronous Warpgroup Level Matrix Shared Memory
// Layout" and "Tensor Copy / Swizzling Modes"):
//
// * 128-byte swizzle ("128B swizzling mode"): a tile of R rows x 64 bf16 (128 bytes per
//   row) is stored row after row; inside each group of 8 rows (1024 bytes, the "swizzle
//   atom"), the 16-byte chunk c of row r is stored at chunk position c ^ (r % 8). The
//   copy engine writes exactly this pattern when the tensor map says
//   CU_TENSOR_MAP_SWIZZLE_128B and the box's inner extent is 128 bytes; wgmma reads it
//   when the descriptor's swizzle field says 128B. The XOR uses address bits [4,7) and
//   [7,10), so each 8-row group must start at a 1024-byte aligned shared address
//   (then the descriptor's "base offset" field stays 0).
// * A head dim of 128 is two such tiles side by side ("column blocks"): columns 0..63,
//   then columns 64..127, each R x 128 bytes (one TMA box each).
// * K-major operand (Q as A, K as B of S = Q K^T: the reduction dim k = head dim is the
//   contiguous one): a wgmma k-step of 16 bf16 is 32 bytes of each row, so the k-steps
//   0..3 of a column block start at +0, +32, +64, +96 bytes of the block; the hardware
//   applies the XOR on the final address, which is why advancing the start address by 32
//   bytes inside a swizzled row is legal. Rows (M or N) advance in 8-row groups of 1024
//   bytes: "stride dimension byte offset" (SBO) = 1024. The "leading dimension byte
//   offset" (LBO) is not used by swizzled K-major layouts when the k extent of one
//   instruction (32 bytes) lies inside the 128-byte swizzle span; we set it to 16 bytes
//   (encoded 1), the conventional value.
// * MN-major operand (V as B of O = P V: the reduction dim k = key index is the row
//   index, and N = head dim is contiguous), selected by imm-trans-b = 1: the swizzle atom
//   is 8 k-rows x 64 n-columns (1024 bytes); LBO = byte distance between consecutive
//   64-wide n blocks (our column blocks: R * 128 bytes, only used when N > 64), SBO = byte
//   distance between consecutive 8-row k groups (1024). One k-step of 16 keys covers two
//   k groups: start address + 2048 bytes per k-step.
//   In elements, the canonical MN-major 128B layout is ((64, m), (8, k)) : ((1, LBO),
//   (64, SBO)): 64 contiguous n, then n blocks LBO apart; 8 k-rows 128 bytes apart, then
//   k groups SBO apart (the form public CUTLASS documentation gives for this mode).
//   Review (compile-only): these roles agree with CUTLASS's make_gmma_desc<Major::MN> for
//   B128 (((8,n),(8,k)) : ((1,LBO),(8,SBO)) in 16-byte units) and with the PTX ISA's
//   leading-dimension definition for MN-major swizzled layouts (stride between
//   swizzle-width blocks along M/N; read in the tcgen05 "Major-ness supported by Strides"
//   table, which describes the same descriptor fields). Still unrun: if the D = 128 output is wrong
//   in columns 64..127 only, swap them first (D = 64 never uses LBO).
// * MN-major A (imm-trans-a = 1, SS only; the backward's dQ = dS K reads A = dS from a
//   tile stored as dS^T: rows = keys = the reduction dim, queries = M contiguous): the
//   same canonical layout with M in the role of N: LBO = distance between 64-wide M
//   blocks, SBO = 1024 between 8-row k groups, k-step = +2048 bytes. The PTX ISA treats
//   A and B symmetrically here (K-major / MN-major per operand, transpose for 16-bit
//   types only); our uses have M = 64 (one block), so LBO is not read.
// * fp32 tiles (the backward's dQ staging for the TMA reduce-add) use the same 128-byte
//   swizzle with 32 floats per 128-byte row: the pattern is byte-based, not type-based.
//
// Register fragments ("Register Fragments and Shared Memory Matrix Layouts", wgmma
// .m64nNk16): warp w of the warpgroup (w = warp % 4) owns rows 16w..16w+15 of the 64-row
// tile; within a warp, with g = lane / 4 and q = lane % 4,
//   accumulator D (fp32), N/2 registers: d[4i + 2h + e] = D(16w + g + 8h, 8i + 2q + e)
//     for i < N/8, h, e in {0, 1} (the mma.sync m16n8 C layout repeated over N/8 columns).
//   A from registers (bf16, 64x16), 4 registers of 2 bf16:
//     a0 = A(16w+g, 2q..2q+1), a1 = A(16w+g+8, 2q..), a2 = A(16w+g, 2q+8..), a3 = A(16w+g+8, 2q+8..)
//   so accumulator columns 16j..16j+15 (d[8j..8j+7]) repack into the A fragment of k-step j:
//   P feeds P V from registers exactly as in the mma.sync kernel (mma.cuh).
// ---------------------------------------------------------------------------------------
#pragma once

#include <cuda.h>  // CUtensorMap (type only; the encoder is fetched at run time)
#include <cuda_bf16.h>

#include <cstdint>

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define MOBA_WGMMA_ENABLED 1
#else
#define MOBA_WGMMA_ENABLED 0
#endif

namespace moba::attn::cuda::wg {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ---- Matrix descriptor ("Matrix Descriptor Format", 64 bits) ---------------------------
//   bits  0..13  start address >> 4        (shared-memory byte address, 16-byte units)
//   bits 16..29  leading dimension byte offset >> 4 (LBO)
//   bits 32..45  stride dimension byte offset >> 4  (SBO)
//   bits 49..51  matrix base offset (0: every swizzle atom is 1024-byte aligned)
//   bits 62..63  swizzle mode: 0 none, 1 128B, 2 64B, 3 32B
constexpr uint64_t kSwizzle128B = 1;
__device__ __forceinline__ uint64_t make_desc(uint32_t saddr, uint32_t lbo_bytes,
                                              uint32_t sbo_bytes) {
  uint64_t d = 0;
  d |= static_cast<uint64_t>((saddr & 0x3FFFF) >> 4);
  d |= static_cast<uint64_t>((lbo_bytes & 0x3FFFF) >> 4) << 16;
  d |= static_cast<uint64_t>((sbo_bytes & 0x3FFFF) >> 4) << 32;
  d |= kSwizzle128B << 62;
  return d;
}
// K-major, 128B swizzle: SBO = 1024 (next 8 rows), LBO unused (1).
__device__ __forceinline__ uint64_t desc_kmajor_sw128(uint32_t saddr) {
  return make_desc(saddr, 16, 1024);
}
// MN-major, 128B swizzle: LBO = distance between 64-column blocks, SBO = 1024 (next 8
// k-rows).
__device__ __forceinline__ uint64_t desc_mnmajor_sw128(uint32_t saddr, uint32_t block_bytes) {
  return make_desc(saddr, block_bytes, 1024);
}

// ---- wgmma ordering ("Asynchronous Warpgroup Level Matrix Multiply-Accumulate
// Instructions": wgmma.fence, wgmma.commit_group, wgmma.wait_group) ----------------------
// wgmma.fence: orders this warpgroup's earlier register writes (accumulators, A
// fragments) before the following wgmma.mma_async reads them. Needed before the first
// wgmma of a batch and whenever registers an async MMA uses were touched in between.
__device__ __forceinline__ void wgmma_fence() {
#if MOBA_WGMMA_ENABLED
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
// Groups every wgmma.mma_async issued since the last commit into one wgmma-group.
__device__ __forceinline__ void wgmma_commit() {
#if MOBA_WGMMA_ENABLED
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
// Waits until at most N wgmma-groups are pending; the accumulators of the completed
// groups may then be read.
template <int N>
__device__ __forceinline__ void wgmma_wait() {
#if MOBA_WGMMA_ENABLED
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
// Keeps the compiler from moving reads or writes of an accumulator register across the
// asynchronous MMA window (an empty asm that "modifies" the register).
template <int N>
__device__ __forceinline__ void fence_regs(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

// ---- wgmma.mma_async ------------------------------------------------------------------
// Operands: d = accumulators; A = descriptor (SS) or 4 registers (RS); B = descriptor;
// p = scale-d predicate (0: D = A*B, 1: D += A*B); imm-scale-a/b = 1 (no negation);
// imm-trans-a/b: 0 = K-major, 1 = transposed (MN-major). bf16 needs the transposes as
// immediates; RS forms have no trans-a.
template <int N>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b,
                                         int accumulate);
template <int N>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4],
                                         uint64_t desc_b, int accumulate);
// Both operands MN-major (imm-trans-a = imm-trans-b = 1): D(64xN) (+)= A(64x16) * B(16xN)
// with A stored M-contiguous and B stored N-contiguous (the backward's dQ = dS K, A = dS
// read from the dS^T tile, B = K read from the K tile).
template <int N>
__device__ __forceinline__ void wgmma_ss_tt(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b,
                                            int accumulate);

#if MOBA_WGMMA_ENABLED
// The operand lists below are spelled out (inline asm takes literal strings only).
// D(64xN fp32) (+)= A(64x16, smem, K-major) * B(16xN, smem, K-major): S = Q K^T.
template <>
__device__ __forceinline__ void wgmma_ss<64>(float (&d)[32], uint64_t desc_a, uint64_t desc_b,
                                             int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

// D(64xN fp32) (+)= A(64x16, smem, K-major) * B(16xN, smem, K-major): S = Q K^T.
template <>
__device__ __forceinline__ void wgmma_ss<128>(float (&d)[64], uint64_t desc_a, uint64_t desc_b,
                                             int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

// D(64xN fp32) (+)= A(64x16 bf16, registers) * B(16xN, smem, MN-major): O += P V.
template <>
__device__ __forceinline__ void wgmma_rs<64>(float (&d)[32], const uint32_t (&a)[4],
                                             uint64_t desc_b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate));
}

// D(64xN fp32) (+)= A(64x16 bf16, registers) * B(16xN, smem, MN-major): O += P V.
template <>
__device__ __forceinline__ void wgmma_rs<128>(float (&d)[64], const uint32_t (&a)[4],
                                             uint64_t desc_b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate));
}
// D(64x64 fp32) (+)= A(64x16, smem, MN-major) * B(16x64, smem, MN-major): dQ = dS K.
template <>
__device__ __forceinline__ void wgmma_ss_tt<64>(float (&d)[32], uint64_t desc_a, uint64_t desc_b,
                                                int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}
#else
template <>
__device__ __forceinline__ void wgmma_ss_tt<64>(float (&)[32], uint64_t, uint64_t, int) {}
template <>
__device__ __forceinline__ void wgmma_ss<64>(float (&)[32], uint64_t, uint64_t, int) {}
template <>
__device__ __forceinline__ void wgmma_ss<128>(float (&)[64], uint64_t, uint64_t, int) {}
template <>
__device__ __forceinline__ void wgmma_rs<64>(float (&)[32], const uint32_t (&)[4], uint64_t, int) {}
template <>
__device__ __forceinline__ void wgmma_rs<128>(float (&)[64], const uint32_t (&)[4], uint64_t, int) {}
#endif  // MOBA_WGMMA_ENABLED

// ---- mbarrier ("Parallel Synchronization and Communication Instructions: mbarrier") ---
// A 64-bit shared-memory object with an expected arrival count, a pending arrival count,
// a transaction (tx) byte count and a phase bit. A phase completes when every expected
// thread has arrived and the tx-count is back to zero; then the phase bit flips and the
// counts reset. Waiters poll "has the phase with parity P completed?" (try_wait.parity):
// a fresh barrier is in phase 0, and parity 1 (the phase "before" it) reads as completed,
// which is how a producer's first wait on an empty slot passes at once.
__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
#if MOBA_WGMMA_ENABLED
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count));
#endif
}
// Makes the initialisation visible to the async proxy (TMA completes on the barrier).
__device__ __forceinline__ void mbar_fence_init() {
#if MOBA_WGMMA_ENABLED
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}
// One arrival plus tx bytes expected from the copy engine in this phase.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
#if MOBA_WGMMA_ENABLED
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)),
               "r"(bytes)
               : "memory");
#endif
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
#if MOBA_WGMMA_ENABLED
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
#endif
}
// Spins until the phase with the given parity has completed (try_wait may also return
// false after a time-out of its own; we retry).
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
#if MOBA_WGMMA_ENABLED
  asm volatile(
      "{\n.reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n}\n" ::"r"(smem_addr(bar)),
      "r"(parity)
      : "memory");
#endif
}

// ---- Bulk tensor copy ("Data Movement: cp.async.bulk.tensor") --------------------------
// Copies one box of a 3-d tensor (coordinates innermost first: column, head, token) from
// global into shared memory, laid out and swizzled as the tensor map says; completion is
// signalled on `bar` as tx bytes. Rows outside the tensor (token >= N) are zero-filled.
// The tensor map lives in parameter space (__grid_constant__), so its generic address
// is a valid operand.
__device__ __forceinline__ void tma_load_3d(void* dst, const CUtensorMap* map, int c0, int c1,
                                            int c2, uint64_t* bar) {
#if MOBA_WGMMA_ENABLED
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(smem_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(smem_addr(bar))
      : "memory");
#endif
}
// Fetches the tensor map into the constant cache ahead of the first copy (optional hint).
__device__ __forceinline__ void tma_prefetch_desc(const CUtensorMap* map) {
#if MOBA_WGMMA_ENABLED
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
#endif
}

// Same for a 2-d tensor (coordinates innermost first).
__device__ __forceinline__ void tma_load_2d(void* dst, const CUtensorMap* map, int c0, int c1,
                                            uint64_t* bar) {
#if MOBA_WGMMA_ENABLED
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3}], [%4];\n" ::"r"(smem_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(smem_addr(bar))
      : "memory");
#endif
}
// Element-wise atomic add of one shared-memory box into a 3-d global tensor
// ("cp.reduce.async.bulk.tensor", .add, tile mode; the element type, f32 here, comes from
// the tensor map). Box elements outside the tensor are skipped. Completion is tracked per
// issuing thread with bulk async-groups (bulk_commit / bulk_wait*): the source box must
// not be overwritten before bulk_wait_read says the copy engine has read it.
__device__ __forceinline__ void tma_reduce_add_3d(const CUtensorMap* map, int c0, int c1, int c2,
                                                  const void* src) {
#if MOBA_WGMMA_ENABLED
  asm volatile(
      "cp.reduce.async.bulk.tensor.3d.global.shared::cta.add.tile.bulk_group"
      " [%0, {%1, %2, %3}], [%4];\n" ::"l"(reinterpret_cast<uint64_t>(map)),
      "r"(c0), "r"(c1), "r"(c2), "r"(smem_addr(src))
      : "memory");
#endif
}
// Non-tensor bulk reduce-add (PTX "cp.reduce.async.bulk", .global.shared::cta, .add.f32):
// `bytes` (a multiple of 16) of fp32 at src (shared, 16-byte aligned) added element by
// element into dst (global, 16-byte aligned), each element's add atomic; for scattered rows,
// which a tensor map cannot address. Completion as tma_reduce_add_3d (bulk async-groups).
__device__ __forceinline__ void bulk_reduce_add_f32(float* dst, const void* src, uint32_t bytes) {
#if MOBA_WGMMA_ENABLED
  asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(dst),
               "r"(smem_addr(src)), "r"(bytes)
               : "memory");
#endif
}
__device__ __forceinline__ void bulk_commit() {
#if MOBA_WGMMA_ENABLED
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
#endif
}
// At most N bulk groups of this thread still reading their shared-memory source.
template <int N>
__device__ __forceinline__ void bulk_wait_read() {
#if MOBA_WGMMA_ENABLED
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
#endif
}
// At most N bulk groups of this thread not complete (writes to global performed).
template <int N>
__device__ __forceinline__ void bulk_wait() {
#if MOBA_WGMMA_ENABLED
  asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// ---- Proxy fence ("Memory Consistency Model: proxies"; "membar/fence": fence.proxy.async)
// Shared-memory writes by ordinary instructions (generic proxy) become visible to the
// async proxy (wgmma operand reads, TMA stores / reductions) only after this fence,
// executed by the writing threads, and a barrier that orders it before the consumer.
__device__ __forceinline__ void fence_proxy_async() {
#if MOBA_WGMMA_ENABLED
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// ---- Named barriers ("bar.sync" / barrier.sync.aligned) ---------------------------------
// Barrier `id` (1..15; 0 is __syncthreads) over `count` threads (a multiple of 32); every
// warp of the participating threads executes it. Orders shared-memory accesses among them.
__device__ __forceinline__ void named_bar_sync(int id, int count) {
#if MOBA_WGMMA_ENABLED
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
#endif
}
// Arrive on barrier `id` without waiting: counts toward `count` for the threads that
// bar.sync on it (a producer / consumer hand-off between warpgroups).
__device__ __forceinline__ void named_bar_arrive(int id, int count) {
#if MOBA_WGMMA_ENABLED
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(count) : "memory");
#endif
}

// ---- Register reallocation ("setmaxnreg", sm_90a) ---------------------------------------
// Every warp of a warpgroup executes it; the kernel needs a register cap at entry
// (__launch_bounds__(threads, 1)). The producer warpgroup gives registers back, the
// consumer warpgroups take them.
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() {
#if MOBA_WGMMA_ENABLED
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}
template <int N>
__device__ __forceinline__ void setmaxnreg_inc() {
#if MOBA_WGMMA_ENABLED
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}

}  // namespace moba::attn::cuda::wg
