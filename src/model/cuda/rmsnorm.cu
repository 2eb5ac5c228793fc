// RMSNorm forward and backward (rmsnorm.h's maths): one warp per row for the row-wise parts;
// the weight gradient is a column sum over rows, done in two deterministic passes (partial
// sums over fixed 64-row chunks, then the chunks in order); for C <= kFusedMaxC the vector
// path computes dx and the partials in one kernel. Rows of
// a width C multiple of 8 (pointers 16-byte aligned) go through 16-byte accesses, with the
// scalar kernels' results bit for bit (see the vector kernels).
#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "model/cuda/common.cuh"
#include "model/cuda/layers_cuda.h"

namespace moba::model::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;
// Rows per partial sum of dw: large enough that the partials (M / kChunkRows, C) stay small
// next to the activations, small enough that M = a few thousand rows still fills the GPU
// with ceil(C / 256) * M / kChunkRows blocks.
constexpr int64_t kChunkRows = 64;

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

// partial[chunk, c] = sum over the chunk's rows, in row order, of dy * x * r. A thread per
// column, so each row's loads are coalesced across the warp.
__global__ void rmsnorm_bwd_dw_partial_kernel(RmsNormParams p, const bf16* __restrict__ x,
                                              const float* __restrict__ rstd,
                                              const bf16* __restrict__ dy,
                                              float* __restrict__ partial) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  if (c >= p.C) return;
  const int64_t m0 = chunk * kChunkRows, m1 = min(p.M, m0 + kChunkRows);
  float acc = 0.f;
  for (int64_t m = m0; m < m1; ++m)
    acc = dw_acc(__bfloat162float(dy[m * p.C + c]), __bfloat162float(x[m * p.C + c]), rstd[m], acc);
  partial[chunk * p.C + c] = acc;
}

// The same partial sums, 8 columns per thread through uint4 loads: each column's terms in
// the same (row) order as the scalar kernel, so the same bits.
constexpr int kDwVecThreads = 128;
__global__ void __launch_bounds__(kDwVecThreads)
    rmsnorm_bwd_dw_partial_vec_kernel(RmsNormParams p, const bf16* __restrict__ x,
                                      const float* __restrict__ rstd, const bf16* __restrict__ dy,
                                      float* __restrict__ partial) {
  const int64_t c8 = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;  // vector column
  const int64_t chunk = blockIdx.y, C8 = p.C / 8;
  if (c8 >= C8) return;
  const int64_t m0 = chunk * kChunkRows, m1 = min(p.M, m0 + kChunkRows);
  const uint4* xv = reinterpret_cast<const uint4*>(x);
  const uint4* dyv = reinterpret_cast<const uint4*>(dy);
  float acc[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) acc[e] = 0.f;
#pragma unroll 4
  for (int64_t m = m0; m < m1; ++m) {
    float fx[8], fdy[8];
    detail::unpack8(xv[m * C8 + c8], fx);
    detail::unpack8(dyv[m * C8 + c8], fdy);
    const float r = rstd[m];
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[e] = dw_acc(fdy[e], fx[e], r, acc[e]);
  }
  float* out = partial + chunk * p.C + c8 * 8;
#pragma unroll
  for (int e = 0; e < 8; ++e) out[e] = acc[e];
}

// The vector path in one pass over x and dy (C a multiple of 8, at most kFusedMaxC; every
// pointer 16-byte aligned): dx as rmsnorm_bwd_dx_vec_kernel and the dw partial sums as
// rmsnorm_bwd_dw_partial_vec_kernel, the same bits, with x and dy read from memory once
// instead of twice. A block per 64-row chunk of dw (kChunkRows: the partials, and so dw,
// are the two kernels' exactly). The chunk goes through in sub-chunks of kFusedRows rows,
// staged in shared memory (the next sub-chunk's loads are in flight, in registers, while
// the current one is computed):
// - dx: warp w takes row w of the sub-chunk; its dot sums c = lane, lane + 32, ... in
//   order from shared memory, as the scalar kernel sums them, then the 16-byte dx pass;
// - dw: thread t owns column vectors t, t + 256, ..., their 8 fp32 sums in shared memory,
//   and adds the sub-chunk's rows in row order: over the chunk, the partial kernel's order.
constexpr int kFusedRows = kWarpsPerBlock;         // rows per sub-chunk: one per warp
constexpr int kFusedThreads = kWarpsPerBlock * 32;
constexpr int kFusedPf = 12;                        // uint4 per thread per sub-chunk, x + dy
// x and dy of a sub-chunk, 2 kFusedRows C / 8 vectors, fit kFusedPf per thread; shared
// memory (x, dy: 2 kFusedRows C bf16; the sums: C fp32) within the default 48 KB.
constexpr int64_t kFusedMaxC = 1360;
constexpr int kFusedDxVec = (kFusedMaxC / 8 + 31) / 32;  // dx vectors per lane in a row
static_assert(kChunkRows % kFusedRows == 0, "a chunk is whole sub-chunks");
static_assert(2 * kFusedRows * (kFusedMaxC / 8) <= kFusedPf * kFusedThreads, "prefetch size");
size_t fused_smem_bytes(int64_t C) {
  return static_cast<size_t>(2 * kFusedRows * C) * sizeof(bf16) + static_cast<size_t>(C) * 4;
}
static_assert((2 * kFusedRows * kFusedMaxC) * 2 + kFusedMaxC * 4 <= 48 * 1024, "shared memory");

__global__ void __launch_bounds__(kFusedThreads)
    rmsnorm_bwd_fused_vec_kernel(RmsNormParams p, const bf16* __restrict__ x,
                                 const float* __restrict__ w, const float* __restrict__ rstd,
                                 const bf16* __restrict__ dy, bf16* dx, bool accumulate,
                                 float* __restrict__ partial) {
  extern __shared__ uint4 smem[];
  const int C8 = static_cast<int>(p.C / 8);
  uint4* sx = smem;                        // (kFusedRows, C8)
  uint4* sdy = smem + kFusedRows * C8;     // (kFusedRows, C8)
  float* sacc = reinterpret_cast<float*>(smem + 2 * kFusedRows * C8);  // (C)
  const int64_t chunk = blockIdx.x;
  const int64_t m0 = chunk * kChunkRows, m1 = min(p.M, m0 + kChunkRows);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const uint4* xv = reinterpret_cast<const uint4*>(x);
  const uint4* dyv = reinterpret_cast<const uint4*>(dy);
  uint4* dxv = reinterpret_cast<uint4*>(dx);
  for (int c = tid; c < p.C; c += kFusedThreads) sacc[c] = 0.f;

  // The sub-chunk at row r0: its n = rows * C8 vectors of x, then its n of dy, thread tid
  // taking elements tid, tid + kFusedThreads, ... of those 2n (rows are contiguous).
  uint4 pf[kFusedPf];
  auto fetch = [&](int64_t r0) {
    const int n = static_cast<int>(min(int64_t{kFusedRows}, m1 - r0)) * C8;
    const int64_t base = r0 * C8;
#pragma unroll
    for (int j = 0; j < kFusedPf; ++j) {
      const int i = tid + j * kFusedThreads;
      if (i < n)
        pf[j] = xv[base + i];
      else if (i < 2 * n)
        pf[j] = dyv[base + i - n];
    }
  };
  fetch(m0);
  for (int64_t r0 = m0; r0 < m1; r0 += kFusedRows) {
    const int rows = static_cast<int>(min(int64_t{kFusedRows}, m1 - r0)), n = rows * C8;
#pragma unroll
    for (int j = 0; j < kFusedPf; ++j) {
      const int i = tid + j * kFusedThreads;
      if (i < n)
        sx[i] = pf[j];
      else if (i < 2 * n)
        sdy[i - n] = pf[j];
    }
    __syncthreads();
    if (r0 + kFusedRows < m1) fetch(r0 + kFusedRows);

    if (warp < rows) {  // dx of row r0 + warp
      const int64_t row = r0 + warp;
      const bf16* rx = reinterpret_cast<const bf16*>(sx + warp * C8);
      const bf16* rdy = reinterpret_cast<const bf16*>(sdy + warp * C8);
      const float r = rstd[row];
      // The row's old dx (accumulating) is loaded before the dot, all of it at once: one
      // memory round trip per sub-chunk, not one per vector (a block per SM or two leaves
      // little else to hide it).
      uint4 old[kFusedDxVec];
      if (accumulate) {
#pragma unroll
        for (int j = 0; j < kFusedDxVec; ++j)
          if (lane + 32 * j < C8) old[j] = dxv[row * C8 + lane + 32 * j];
      }
      float dot = 0.f;
      for (int c = lane; c < p.C; c += 32)
        dot = dot_acc(__bfloat162float(rdy[c]), w[c], __bfloat162float(rx[c]), dot);
      const float mean = detail::warp_sum(dot) * r / float(p.C);
#pragma unroll
      for (int j = 0; j < kFusedDxVec; ++j) {
        const int i = lane + 32 * j;
        if (i >= C8) break;
        float fx[8], fdy[8], wf[8], g[8] = {};
        detail::unpack8(sx[warp * C8 + i], fx);
        detail::unpack8(sdy[warp * C8 + i], fdy);
        detail::load8(w + i * 8, wf);
        if (accumulate) detail::unpack8(old[j], g);
#pragma unroll
        for (int e = 0; e < 8; ++e) g[e] = norm_dx(fx[e], fdy[e], wf[e], r, mean, accumulate, g[e]);
        dxv[row * C8 + i] = detail::pack8(g);
      }
    }
    for (int cv = tid; cv < C8; cv += kFusedThreads) {  // dw: this thread's columns
      float acc[8];
      float4* a4 = reinterpret_cast<float4*>(sacc + cv * 8);
      const float4 lo = a4[0], hi = a4[1];
      acc[0] = lo.x, acc[1] = lo.y, acc[2] = lo.z, acc[3] = lo.w;
      acc[4] = hi.x, acc[5] = hi.y, acc[6] = hi.z, acc[7] = hi.w;
      for (int r = 0; r < rows; ++r) {
        float fx[8], fdy[8];
        detail::unpack8(sx[r * C8 + cv], fx);
        detail::unpack8(sdy[r * C8 + cv], fdy);
        const float rr = rstd[r0 + r];
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[e] = dw_acc(fdy[e], fx[e], rr, acc[e]);
      }
      a4[0] = make_float4(acc[0], acc[1], acc[2], acc[3]);
      a4[1] = make_float4(acc[4], acc[5], acc[6], acc[7]);
    }
    __syncthreads();  // the sub-chunk is consumed before the next one overwrites it
  }
  for (int c = tid; c < p.C; c += kFusedThreads) partial[chunk * p.C + c] = sacc[c];
}

// dw[c] += sum of the partials in chunk order: the same order every run. The loads of
// kReduceBatch chunks are issued before their adds (the adds stay in chunk order, so the
// bits are those of the plain loop): a thread's chain of dependent L2 round trips is
// chunks / kReduceBatch long instead of chunks.
constexpr int kReduceBatch = 32;
constexpr int kReduceThreads = 128;
__global__ void __launch_bounds__(kReduceThreads)
    rmsnorm_bwd_dw_reduce_kernel(int64_t C, int64_t chunks, const float* __restrict__ partial,
                                 float* dw) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float acc = 0.f;
  int64_t k = 0;
  for (; k + kReduceBatch <= chunks; k += kReduceBatch) {
    float v[kReduceBatch];
#pragma unroll
    for (int j = 0; j < kReduceBatch; ++j) v[j] = partial[(k + j) * C + c];
#pragma unroll
    for (int j = 0; j < kReduceBatch; ++j) acc += v[j];
  }
  for (; k < chunks; ++k) acc += partial[k * C + c];
  dw[c] += acc;
}

// MOBA_RMSNORM_BWD=split takes the vector path's two kernels (dx, then the dw partials)
// where the one-pass kernel would run: the same bits, for timing one against the other.
bool fused_backward_on() {
  const char* e = std::getenv("MOBA_RMSNORM_BWD");
  if (e == nullptr || *e == '\0' || std::strcmp(e, "fused") == 0) return true;
  MOBA_CHECK(std::strcmp(e, "split") == 0, "MOBA_RMSNORM_BWD=", e, ": expected fused or split");
  return false;
}

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
  MOBA_CHECK(chunks < 65536, "rmsnorm_backward: M = ", p.M, " rows exceed the ", 65535 * kChunkRows,
             " the dw reduction's grid allows");
  const unsigned blocks = static_cast<unsigned>((p.M + kWarpsPerBlock - 1) / kWarpsPerBlock);
  const bool vec = p.C % 8 == 0 && detail::aligned16(x) && detail::aligned16(w) &&
                   detail::aligned16(dy) && detail::aligned16(dx);
  float* partial = static_cast<float*>(workspace);
  if (vec && p.C <= kFusedMaxC && fused_backward_on()) {
    // dx and the dw partials in one pass over x and dy.
    rmsnorm_bwd_fused_vec_kernel<<<static_cast<unsigned>(chunks), kFusedThreads,
                                   fused_smem_bytes(p.C), stream>>>(p, x, w, rstd, dy, dx,
                                                                    accumulate_dx, partial);
  } else if (vec) {
    rmsnorm_bwd_dx_vec_kernel<<<blocks, kWarpsPerBlock * 32, 0, stream>>>(p, x, w, rstd, dy, dx,
                                                                          accumulate_dx);
    CUDA_CHECK_LAUNCH();
    const int64_t C8 = p.C / 8;
    const dim3 grid(static_cast<unsigned>((C8 + kDwVecThreads - 1) / kDwVecThreads),
                    static_cast<unsigned>(chunks));
    rmsnorm_bwd_dw_partial_vec_kernel<<<grid, kDwVecThreads, 0, stream>>>(p, x, rstd, dy, partial);
  } else {
    rmsnorm_bwd_dx_kernel<<<blocks, kWarpsPerBlock * 32, 0, stream>>>(p, x, w, rstd, dy, dx,
                                                                       accumulate_dx);
    CUDA_CHECK_LAUNCH();
    const dim3 grid(static_cast<unsigned>((p.C + 255) / 256), static_cast<unsigned>(chunks));
    rmsnorm_bwd_dw_partial_kernel<<<grid, 256, 0, stream>>>(p, x, rstd, dy, partial);
  }
  CUDA_CHECK_LAUNCH();
  rmsnorm_bwd_dw_reduce_kernel<<<static_cast<unsigned>((p.C + kReduceThreads - 1) /
                                                       kReduceThreads),
                                 kReduceThreads, 0, stream>>>(p.C, chunks, partial, dw);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moba::model::cuda
