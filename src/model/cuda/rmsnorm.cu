// RMSNorm forward and backward (rmsnorm.h's maths): one warp per row for the row-wise parts;
// the weight gradient is a column sum over rows, done in two deterministic passes (partial
// sums over fixed 32-row chunks, then a fixed tree over the chunks; see "dw's summation
// order" below); for C <= kFusedMaxC the vector path computes dx and the partials in one
// kernel. Rows of
// a width C multiple of 8 (pointers 16-byte aligned) go through 16-byte accesses, with the
// scalar kernels' results bit for bit (see the vector kernels).

#include "core/env_choice.h"
#include "core/error.h"
#include "model/cuda/common.cuh"
#include "model/cuda/layers_cuda.h"

namespace moba::model::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;

// ---- dw's summation order ---------------------------------------------------------------
// Fixed, and the same for the scalar, vector and one-pass paths (so the same bits):
// 1. group: kGroupRows consecutive rows, dw_acc in row order from 0 (a warp's rows in the
//    one-pass kernel);
// 2. chunk: kGroupsPerChunk consecutive groups, their sums added in group order from 0 (an
//    empty group, past row M, adds +0), written to the workspace as partial[chunk, c];
// 3. dw[c] += the chunks' sum: chunk k goes to slot k % kReduceSlots, each slot adds its
//    chunks in chunk order from 0, then the slots are added by a fixed pairwise tree.
// Why these sizes (H200, 132 SMs, C = 768, M = 8192 to 32768 rows): the one-pass kernel
// streams x, dy and dx (read when accumulating, written): 4 x 2 x M x C bytes, 50 MB at
// M = 8192, 12.5 us at ~4 TB/s. To keep ~4 TB/s with ~1 us of DRAM latency under load,
// ~4 MB must be in flight, ~30 KB per SM. A warp per group with the next row's x, dy and
// dx loads in flight (4.5 KB at C = 768) and two 8-warp blocks per SM (<= 128 registers a
// thread) has 16 x 4.5 = 72 KB in flight per SM. Groups of 4 rows: M = 8192 gives 2048
// warps, 256 blocks for 264 block slots (one wave); 32768 gives 1024 blocks (3.9 waves).
// The partials, (M / 32, C) fp32, are 1/16 of x's bytes: written and read once, +3% of
// the traffic (the 64-row chunks of a block per chunk before: 128 blocks at M = 8192, one
// 8-warp block per SM walking 8 dependent sub-chunks, ~47 us a call).
constexpr int64_t kGroupRows = 4;
constexpr int kGroupsPerChunk = 8;
constexpr int64_t kChunkRows = kGroupRows * kGroupsPerChunk;  // rows per partial sum of dw

// The maths, shared by the scalar and the vector kernels. Each multiply-add is spelled out
// with intrinsics (never contracted), with the roundings the compiler chose for the plain
// expressions before the vector path existed, so both paths give those bits whatever the
// compiler would do with the unrolled vector code.
__device__ __forceinline__ float norm_y(float x, float r, float w) {
  return __fmul_rn(__fmul_rn(x, r), w);
}
// dx = r * (dy * w - x * r * mean), + old when accumulating (one fma).
__device__ __forceinline__ float norm_dx(float x, float dy, float w, float r, float mean,
                                         bool accumulate, float old) {
  const float d = __fmaf_rn(dy, w, -__fmul_rn(__fmul_rn(x, r), mean));
  return accumulate ? __fmaf_rn(r, d, old) : __fmul_rn(r, d);
}
__device__ __forceinline__ float sq_acc(float v, float ss) { return __fmaf_rn(v, v, ss); }
__device__ __forceinline__ float dot_acc(float dy, float w, float x, float dot) {
  return __fmaf_rn(__fmul_rn(dy, w), x, dot);
}
__device__ __forceinline__ float dw_acc(float dy, float x, float r, float acc) {
  return __fmaf_rn(__fmul_rn(dy, x), r, acc);
}

// y = x * r * w, r = 1 / sqrt(mean(x^2) + eps), sum of squares in fp32.
__global__ void rmsnorm_fwd_kernel(RmsNormParams p, const bf16* __restrict__ x,
                                   const float* __restrict__ w, bf16* __restrict__ y,
                                   float* __restrict__ rstd) {
  const int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= p.M) return;
  const bf16* xr = x + row * p.C;
  float ss = 0.f;
  for (int64_t c = lane; c < p.C; c += 32) {
    const float v = __bfloat162float(xr[c]);
    ss = sq_acc(v, ss);
  }
  ss = detail::warp_sum(ss);
  const float r = rsqrtf(ss / float(p.C) + p.eps);
  if (lane == 0) rstd[row] = r;
  for (int64_t c = lane; c < p.C; c += 32)
    y[row * p.C + c] = __float2bfloat16_rn(norm_y(__bfloat162float(xr[c]), r, w[c]));
}

// dx = r * (dy * w - x * r * mean(dy * w * x * r)).
__global__ void rmsnorm_bwd_dx_kernel(RmsNormParams p, const bf16* __restrict__ x,
                                      const float* __restrict__ w, const float* __restrict__ rstd,
                                      const bf16* __restrict__ dy, bf16* dx, bool accumulate) {
  const int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= p.M) return;
  const bf16* xr = x + row * p.C;
  const bf16* dyr = dy + row * p.C;
  const float r = rstd[row];
  float dot = 0.f;
  for (int64_t c = lane; c < p.C; c += 32)
    dot = dot_acc(__bfloat162float(dyr[c]), w[c], __bfloat162float(xr[c]), dot);
  const float mean = detail::warp_sum(dot) * r / float(p.C);
  for (int64_t c = lane; c < p.C; c += 32) {
    const float old = accumulate ? __bfloat162float(dx[row * p.C + c]) : 0.f;
    dx[row * p.C + c] = __float2bfloat16_rn(
        norm_dx(__bfloat162float(xr[c]), __bfloat162float(dyr[c]), w[c], r, mean, accumulate, old));
  }
}

// ---- Vector paths: C a multiple of 8, x, y, dy, dx, w 16-byte aligned ------------------
// The row sums (sum of squares; dy * w * x) must add the same terms in the same order as
// the scalar kernels to give the same bits: lane l sums c = l, l + 32, l + 64, ... So the
// row comes in as uint4 loads of 256 elements (32 lanes x 8) at a time, staged in the warp's
// shared memory, from where lane l reads its scalar elements l, l + 32, ..., l + 224 of the
// chunk in order. The next chunk's loads are issued before the current one is summed. The
// per-element passes (y, dx) go straight through uint4 loads and stores.
constexpr int kChunkVec = 32;  // vectors per staged chunk: 256 elements

__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    rmsnorm_fwd_vec_kernel(RmsNormParams p, const bf16* __restrict__ x,
                           const float* __restrict__ w, bf16* __restrict__ y,
                           float* __restrict__ rstd) {
  __shared__ uint4 stage[kWarpsPerBlock][kChunkVec];
  const int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (row >= p.M) return;  // the whole warp: row is the warp's
  const int64_t nvec = p.C / 8;
  const uint4* xv = reinterpret_cast<const uint4*>(x + row * p.C);
  const bf16* st = reinterpret_cast<const bf16*>(stage[warp]);
  float ss = 0.f;
  uint4 next = make_uint4(0u, 0u, 0u, 0u);
  if (lane < nvec) next = xv[lane];
  for (int64_t b = 0; b < nvec; b += kChunkVec) {  // b: the chunk's first vector
    stage[warp][lane] = next;                      // past the row's end: never read
    __syncwarp();
    if (b + kChunkVec + lane < nvec) next = xv[b + kChunkVec + lane];
    const int len = static_cast<int>(min(int64_t{kChunkVec}, nvec - b)) * 8;
    for (int j = lane; j < len; j += 32) {
      ss = sq_acc(__bfloat162float(st[j]), ss);
    }
    __syncwarp();  // the chunk is consumed before the next overwrites it
  }
  ss = detail::warp_sum(ss);
  const float r = rsqrtf(ss / float(p.C) + p.eps);
  if (lane == 0) rstd[row] = r;
  uint4* yv = reinterpret_cast<uint4*>(y + row * p.C);
  for (int64_t i = lane; i < nvec; i += 32) {
    float f[8], wf[8];
    detail::unpack8(xv[i], f);
    detail::load8(w + i * 8, wf);
#pragma unroll
    for (int e = 0; e < 8; ++e) f[e] = norm_y(f[e], r, wf[e]);
    yv[i] = detail::pack8(f);
  }
}

// dx's vector path. w is read per element in the dot (as the scalar kernel: a warp reads 32
// consecutive floats), dx through uint4 (read when accumulating, then written: one thread
// per element, so dx may be any buffer that is not x or dy).
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    rmsnorm_bwd_dx_vec_kernel(RmsNormParams p, const bf16* __restrict__ x,
                              const float* __restrict__ w, const float* __restrict__ rstd,
                              const bf16* __restrict__ dy, bf16* dx, bool accumulate) {
  __shared__ uint4 stage_x[kWarpsPerBlock][kChunkVec], stage_dy[kWarpsPerBlock][kChunkVec];
  const int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (row >= p.M) return;  // the whole warp
  const int64_t nvec = p.C / 8;
  const uint4* xv = reinterpret_cast<const uint4*>(x + row * p.C);
  const uint4* dyv = reinterpret_cast<const uint4*>(dy + row * p.C);
  const bf16* sx = reinterpret_cast<const bf16*>(stage_x[warp]);
  const bf16* sdy = reinterpret_cast<const bf16*>(stage_dy[warp]);
  const float r = rstd[row];
  float dot = 0.f;
  uint4 nx = make_uint4(0u, 0u, 0u, 0u), ndy = nx;
  if (lane < nvec) {
    nx = xv[lane];
    ndy = dyv[lane];
  }
  for (int64_t b = 0; b < nvec; b += kChunkVec) {
    stage_x[warp][lane] = nx;
    stage_dy[warp][lane] = ndy;
    __syncwarp();
    if (b + kChunkVec + lane < nvec) {
      nx = xv[b + kChunkVec + lane];
      ndy = dyv[b + kChunkVec + lane];
    }
    const int len = static_cast<int>(min(int64_t{kChunkVec}, nvec - b)) * 8;
    const float* wb = w + b * 8;  // element j of the chunk is column b * 8 + j
    for (int j = lane; j < len; j += 32)
      dot = dot_acc(__bfloat162float(sdy[j]), wb[j], __bfloat162float(sx[j]), dot);
    __syncwarp();
  }
  const float mean = detail::warp_sum(dot) * r / float(p.C);
  uint4* dxv = reinterpret_cast<uint4*>(dx + row * p.C);
  for (int64_t i = lane; i < nvec; i += 32) {
    float fx[8], fdy[8], wf[8], g[8] = {};
    detail::unpack8(xv[i], fx);
    detail::unpack8(dyv[i], fdy);
    detail::load8(w + i * 8, wf);
    if (accumulate) detail::unpack8(dxv[i], g);
#pragma unroll
    for (int e = 0; e < 8; ++e) g[e] = norm_dx(fx[e], fdy[e], wf[e], r, mean, accumulate, g[e]);
    dxv[i] = detail::pack8(g);
  }
}

// partial[chunk, c]: the chunk's groups of rows (dw's summation order, steps 1 and 2). A
// thread per column, so each row's loads are coalesced across the warp. A block per chunk
// (x) and 256 columns (y).
__global__ void rmsnorm_bwd_dw_partial_kernel(RmsNormParams p, const bf16* __restrict__ x,
                                              const float* __restrict__ rstd,
                                              const bf16* __restrict__ dy,
                                              float* __restrict__ partial) {
  const int64_t c = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  const int64_t chunk = blockIdx.x;
  if (c >= p.C) return;
  float acc = 0.f;
  for (int g = 0; g < kGroupsPerChunk; ++g) {
    const int64_t m0 = chunk * kChunkRows + g * kGroupRows, m1 = min(p.M, m0 + kGroupRows);
    float s = 0.f;
    for (int64_t m = m0; m < m1; ++m)
      s = dw_acc(__bfloat162float(dy[m * p.C + c]), __bfloat162float(x[m * p.C + c]), rstd[m], s);
    acc = __fadd_rn(acc, s);
  }
  partial[chunk * p.C + c] = acc;
}

// The same partial sums, 8 columns per thread through uint4 loads: each column's terms in
// the same order as the scalar kernel, so the same bits.
constexpr int kDwVecThreads = 128;
__global__ void __launch_bounds__(kDwVecThreads)
    rmsnorm_bwd_dw_partial_vec_kernel(RmsNormParams p, const bf16* __restrict__ x,
                                      const float* __restrict__ rstd, const bf16* __restrict__ dy,
                                      float* __restrict__ partial) {
  const int64_t c8 = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;  // vector column
  const int64_t chunk = blockIdx.x, C8 = p.C / 8;
  if (c8 >= C8) return;
  const uint4* xv = reinterpret_cast<const uint4*>(x);
  const uint4* dyv = reinterpret_cast<const uint4*>(dy);
  float acc[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) acc[e] = 0.f;
  for (int g = 0; g < kGroupsPerChunk; ++g) {
    const int64_t m0 = chunk * kChunkRows + g * kGroupRows, m1 = min(p.M, m0 + kGroupRows);
    float s[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) s[e] = 0.f;
#pragma unroll 4
    for (int64_t m = m0; m < m1; ++m) {
      float fx[8], fdy[8];
      detail::unpack8(xv[m * C8 + c8], fx);
      detail::unpack8(dyv[m * C8 + c8], fdy);
      const float r = rstd[m];
#pragma unroll
      for (int e = 0; e < 8; ++e) s[e] = dw_acc(fdy[e], fx[e], r, s[e]);
    }
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[e] = __fadd_rn(acc[e], s[e]);
  }
  float* out = partial + chunk * p.C + c8 * 8;
#pragma unroll
  for (int e = 0; e < 8; ++e) out[e] = acc[e];
}

// The vector path in one pass over x and dy (C a multiple of 8, at most kFusedMaxC; every
// pointer 16-byte aligned): dx as rmsnorm_bwd_dx_vec_kernel and the dw partial sums as
// rmsnorm_bwd_dw_partial_vec_kernel, the same bits, with x and dy read from memory once
// instead of twice. A block per chunk, a warp per group of kGroupRows rows (dw's order,
// step 1), the warp's rows one after another; lane l holds the row's vectors l, l + 32,
// ..., l + 32 (J - 1) (J = ceil(C / 256), a template argument, so they stay in registers):
// - the row's x and dy go to the warp's shared memory, the next row's x, dy (and rstd) are
//   loaded, then the dot sums c = lane, lane + 32, ... in order from shared memory, as the
//   scalar kernel sums them;
// - dx and the lane's dw sums from its own vectors (read back from shared memory), the old
//   dx (accumulating) loaded during the previous row; then the next row's old dx is loaded;
// - at the end each warp leaves its group's sums in its own shared memory (C fp32: the
//   bytes of its staged x and dy row), and the block adds the groups in order (step 2).
// No block-wide barrier but the last: the warps of a block run independently.
constexpr int kFusedThreads = kGroupsPerChunk * 32;
// Shared memory: a row of x and dy per warp, 4 C bytes, 32 C per block, within the
// default 48 KB up to C = 1536. Registers: 3 uint4 (x, dy, old dx) and 8 fp32 sums per
// vector of a lane, 20 J + the addressing; ptxas (sm_90a, CUDA 13) gives J = 1 ... 6 72,
// 102, 122, 144, 166, 191, no spills: J <= 3 (C <= 768) within 128, two blocks per SM;
// J = 6 (C = 1536) one block per SM, its 8 warps with 9 KB each in flight.
constexpr int64_t kFusedMaxC = 1536;
constexpr int kFusedMaxJ = static_cast<int>(kFusedMaxC / 256);
size_t fused_smem_bytes(int64_t C) { return static_cast<size_t>(kGroupsPerChunk * 4 * C); }
static_assert(kGroupsPerChunk * 4 * kFusedMaxC <= 48 * 1024, "shared memory");
template <int J>
constexpr int fused_min_blocks() {
  return J <= 3 ? 2 : 1;
}

template <int J>
__global__ void __launch_bounds__(kFusedThreads, fused_min_blocks<J>())
    rmsnorm_bwd_fused_vec_kernel(RmsNormParams p, const bf16* __restrict__ x,
                                 const float* __restrict__ w, const float* __restrict__ rstd,
                                 const bf16* __restrict__ dy, bf16* dx, bool accumulate,
                                 float* __restrict__ partial) {
  extern __shared__ uint4 smem[];
  const int C = static_cast<int>(p.C), C8 = C / 8;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  uint4* sx = smem + warp * 2 * C8;  // the warp's row of x (C8 vectors), then of dy
  uint4* sdy = sx + C8;
  const bf16* bx = reinterpret_cast<const bf16*>(sx);
  const bf16* bdy = reinterpret_cast<const bf16*>(sdy);
  const int64_t chunk = blockIdx.x;
  const int64_t g0 = chunk * kChunkRows + warp * kGroupRows;
  const int64_t g1 = min(p.M, g0 + kGroupRows);  // g0 >= g1: no rows (in the last chunk)
  const uint4* xv = reinterpret_cast<const uint4*>(x);
  const uint4* dyv = reinterpret_cast<const uint4*>(dy);
  uint4* dxv = reinterpret_cast<uint4*>(dx);
  auto load = [&](uint4(&v)[J], const uint4* src, int64_t row) {
#pragma unroll
    for (int j = 0; j < J; ++j)
      if (lane + 32 * j < C8) v[j] = src[row * C8 + lane + 32 * j];
  };

  float acc[J][8];
  uint4 nx[J], ndy[J], old[J];
#pragma unroll
  for (int j = 0; j < J; ++j) {
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[j][e] = 0.f;
    nx[j] = ndy[j] = old[j] = make_uint4(0u, 0u, 0u, 0u);
  }
  float nr = 0.f;
  if (g0 < g1) {
    load(nx, xv, g0);
    load(ndy, dyv, g0);
    if (accumulate) load(old, dxv, g0);
    nr = rstd[g0];
  }
  for (int64_t row = g0; row < g1; ++row) {
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int i = lane + 32 * j;
      if (i < C8) {
        sx[i] = nx[j];
        sdy[i] = ndy[j];
      }
    }
    const float r = nr;
    __syncwarp();
    if (row + 1 < g1) {
      load(nx, xv, row + 1);
      load(ndy, dyv, row + 1);
      nr = rstd[row + 1];
    }
    float dot = 0.f;
#pragma unroll
    for (int k = 0; k < 8 * J; ++k) {
      const int c = lane + 32 * k;
      if (c < C) dot = dot_acc(__bfloat162float(bdy[c]), w[c], __bfloat162float(bx[c]), dot);
    }
    const float mean = detail::warp_sum(dot) * r / float(p.C);
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int i = lane + 32 * j;
      if (i < C8) {
        float fx[8], fdy[8], wf[8], g[8] = {};
        detail::unpack8(sx[i], fx);
        detail::unpack8(sdy[i], fdy);
        detail::load8(w + i * 8, wf);
        if (accumulate) detail::unpack8(old[j], g);
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          g[e] = norm_dx(fx[e], fdy[e], wf[e], r, mean, accumulate, g[e]);
          acc[j][e] = dw_acc(fdy[e], fx[e], r, acc[j][e]);
        }
        dxv[row * C8 + i] = detail::pack8(g);
      }
    }
    if (accumulate && row + 1 < g1) load(old, dxv, row + 1);
    __syncwarp();  // the row is consumed before the next overwrites it
  }

  // The group's sums over the warp's own staging bytes (2 C8 uint4 = C fp32), then the
  // chunk's partial: the groups in order.
  float* own = reinterpret_cast<float*>(sx);
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int i = lane + 32 * j;
    if (i < C8) {
      float4* o4 = reinterpret_cast<float4*>(own + i * 8);
      o4[0] = make_float4(acc[j][0], acc[j][1], acc[j][2], acc[j][3]);
      o4[1] = make_float4(acc[j][4], acc[j][5], acc[j][6], acc[j][7]);
    }
  }
  __syncthreads();
  const float* sums = reinterpret_cast<const float*>(smem);  // (kGroupsPerChunk, C)
  for (int c = tid; c < C; c += kFusedThreads) {
    float s = 0.f;
#pragma unroll
    for (int g = 0; g < kGroupsPerChunk; ++g) s = __fadd_rn(s, sums[g * C + c]);
    partial[chunk * p.C + c] = s;
  }
}

template <int J>
void launch_fused(const RmsNormParams& p, int64_t chunks, const bf16* x, const float* w,
                  const float* rstd, const bf16* dy, bf16* dx, bool accumulate, float* partial,
                  cudaStream_t stream) {
  if constexpr (J > 1) {
    if ((p.C / 8 + 31) / 32 < J)
      return launch_fused<J - 1>(p, chunks, x, w, rstd, dy, dx, accumulate, partial, stream);
  }
  rmsnorm_bwd_fused_vec_kernel<J>
      <<<static_cast<unsigned>(chunks), kFusedThreads, fused_smem_bytes(p.C), stream>>>(
          p, x, w, rstd, dy, dx, accumulate, partial);
}

// dw[c] += the chunks' sum (dw's summation order, step 3). A block per kReduceCols columns
// (a 32-byte sector of each partial row), kReduceSlots threads per column; a thread issues
// kReduceBatch loads before adding them in order, so its chain of L2 round trips is
// chunks / (kReduceSlots kReduceBatch) long: 2 at M = 32768 (1024 chunks). C = 768: 96
// blocks, each reading chunks x 32 bytes (32 KB at M = 32768).
constexpr int kReduceSlots = 32;
constexpr int kReduceCols = 8;
constexpr int kReduceBatch = 16;
__global__ void __launch_bounds__(kReduceSlots * kReduceCols)
    rmsnorm_bwd_dw_reduce_kernel(int64_t C, int64_t chunks, const float* __restrict__ partial,
                                 float* dw) {
  __shared__ float slot_sum[kReduceSlots][kReduceCols];
  const int col = threadIdx.x % kReduceCols, slot = threadIdx.x / kReduceCols;
  const int64_t c = int64_t(blockIdx.x) * kReduceCols + col;
  float acc = 0.f;
  if (c < C) {
    for (int64_t k = slot; k < chunks; k += kReduceSlots * kReduceBatch) {
      float v[kReduceBatch];
#pragma unroll
      for (int j = 0; j < kReduceBatch; ++j) {
        const int64_t kj = k + j * kReduceSlots;
        v[j] = kj < chunks ? partial[kj * C + c] : 0.f;
      }
#pragma unroll
      for (int j = 0; j < kReduceBatch; ++j)
        if (k + j * kReduceSlots < chunks) acc = __fadd_rn(acc, v[j]);
    }
  }
  slot_sum[slot][col] = acc;
  __syncthreads();
  for (int h = kReduceSlots / 2; h > 0; h /= 2) {  // slot s += slot s + h: a fixed tree
    if (slot < h) slot_sum[slot][col] = __fadd_rn(slot_sum[slot][col], slot_sum[slot + h][col]);
    __syncthreads();
  }
  if (slot == 0 && c < C) dw[c] += slot_sum[0][col];
}

// MOBA_RMSNORM_BWD=split takes the vector path's two kernels (dx, then the dw partials)
// where the one-pass kernel would run: the same bits, for timing one against the other.
bool fused_backward_on() { return env_choice("MOBA_RMSNORM_BWD", {"fused", "split"}) == 0; }

void check(const RmsNormParams& p) {
  MOBA_CHECK(p.M >= 0 && p.C >= 1, "rmsnorm: need M >= 0 rows and C >= 1 columns, got M = ", p.M,
             ", C = ", p.C);
  MOBA_CHECK(p.eps >= 0.f, "rmsnorm: eps must be >= 0, got ", p.eps);
  MOBA_CHECK(p.M * p.C < (int64_t{1} << 40), "rmsnorm: M * C too large");
}

}  // namespace

void rmsnorm_forward(const RmsNormParams& p, const bf16* x, const float* w, bf16* y, float* rstd,
                     cudaStream_t stream) {
  check(p);
  if (p.M == 0) return;
  MOBA_CHECK(x && w && y && rstd, "rmsnorm_forward: null pointer");
  const unsigned blocks = static_cast<unsigned>((p.M + kWarpsPerBlock - 1) / kWarpsPerBlock);
  if (p.C % 8 == 0 && detail::aligned16(x) && detail::aligned16(w) && detail::aligned16(y))
    rmsnorm_fwd_vec_kernel<<<blocks, kWarpsPerBlock * 32, 0, stream>>>(p, x, w, y, rstd);
  else
    rmsnorm_fwd_kernel<<<blocks, kWarpsPerBlock * 32, 0, stream>>>(p, x, w, y, rstd);
  CUDA_CHECK_LAUNCH();
}

size_t rmsnorm_backward_workspace(const RmsNormParams& p) {
  const int64_t chunks = (p.M + kChunkRows - 1) / kChunkRows;
  return sizeof(float) * static_cast<size_t>(chunks > 0 ? chunks : 1) * static_cast<size_t>(p.C);
}

void rmsnorm_backward(const RmsNormParams& p, const bf16* x, const float* w, const float* rstd,
                      const bf16* dy, bf16* dx, float* dw, bool accumulate_dx, void* workspace,
                      cudaStream_t stream) {
  check(p);
  if (p.M == 0) return;
  MOBA_CHECK(x && w && rstd && dy && dx && dw && workspace, "rmsnorm_backward: null pointer");
  const int64_t chunks = (p.M + kChunkRows - 1) / kChunkRows;
  MOBA_CHECK(chunks < (int64_t{1} << 31) && (p.C + 255) / 256 < 65536,
             "rmsnorm_backward: M = ", p.M, ", C = ", p.C, " exceed the dw kernels' grids");
  const unsigned blocks = static_cast<unsigned>((p.M + kWarpsPerBlock - 1) / kWarpsPerBlock);
  const bool vec = p.C % 8 == 0 && detail::aligned16(x) && detail::aligned16(w) &&
                   detail::aligned16(dy) && detail::aligned16(dx);
  float* partial = static_cast<float*>(workspace);
  if (vec && p.C <= kFusedMaxC && fused_backward_on()) {
    // dx and the dw partials in one pass over x and dy.
    launch_fused<kFusedMaxJ>(p, chunks, x, w, rstd, dy, dx, accumulate_dx, partial, stream);
  } else if (vec) {
    rmsnorm_bwd_dx_vec_kernel<<<blocks, kWarpsPerBlock * 32, 0, stream>>>(p, x, w, rstd, dy, dx,
                                                                          accumulate_dx);
    CUDA_CHECK_LAUNCH();
    const int64_t C8 = p.C / 8;
    const dim3 grid(static_cast<unsigned>(chunks),
                    static_cast<unsigned>((C8 + kDwVecThreads - 1) / kDwVecThreads));
    rmsnorm_bwd_dw_partial_vec_kernel<<<grid, kDwVecThreads, 0, stream>>>(p, x, rstd, dy, partial);
  } else {
    rmsnorm_bwd_dx_kernel<<<blocks, kWarpsPerBlock * 32, 0, stream>>>(p, x, w, rstd, dy, dx,
                                                                       accumulate_dx);
    CUDA_CHECK_LAUNCH();
    const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>((p.C + 255) / 256));
    rmsnorm_bwd_dw_partial_kernel<<<grid, 256, 0, stream>>>(p, x, rstd, dy, partial);
  }
  CUDA_CHECK_LAUNCH();
  const unsigned reduce_blocks = static_cast<unsigned>((p.C + kReduceCols - 1) / kReduceCols);
  rmsnorm_bwd_dw_reduce_kernel<<<reduce_blocks, kReduceSlots * kReduceCols, 0, stream>>>(
      p.C, chunks, partial, dw);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moba::model::cuda
