// RoPE (rope.h's "rotate half" convention): element i < D/2 of a head pairs with i + D/2
// and turns by pos * theta^(-2i/D). One thread per pair, in place, or 8 pairs through
// 16-byte accesses when D/2 is a multiple of 8 (same bits); the backward is the same
// rotation by -angle.
#include <algorithm>
#include <vector>

#include "core/error.h"
#include "model/cuda/common.cuh"
#include "model/cuda/layers_cuda.h"
#include "model/rope.h"

namespace moba::model::cuda {
namespace {

constexpr int kThreads = 256;

// One pair's rotation, shared by the scalar and the vector kernels: ya = a c - sign b s,
// yb = b c + sign a s. Each multiply-add is spelled out (intrinsics are never contracted),
// with the roundings the compiler chose for the plain expressions before the vector path
// existed, so that both paths give those bits whatever the compiler does with the
// unrolled vector code (which product goes into the fma is otherwise its choice).
__device__ __forceinline__ void rotate(float a, float b, float c, float s, float sign, float& ya,
                                       float& yb) {
  ya = __fmaf_rn(a, c, -__fmul_rn(__fmul_rn(sign, b), s));
  yb = __fmaf_rn(__fmul_rn(sign, a), s, __fmul_rn(b, c));
}

// Pair (i, i + half) of a head for table row t: read from src, written rotated to dst (the
// same head in place, or another buffer), or a NaN pair when t has no row rather than a
// read past the table. Idx: the kernel's index type (the table offset t * half + i is
// computed in it).
template <typename Idx>
__device__ __forceinline__ void rope_pair(const bf16* src, bf16* dst, Idx i, Idx half, int32_t t,
                                          int64_t T, const float* __restrict__ cs,
                                          const float* __restrict__ sn, float sign) {
  if (t < 0 || t >= T) {
    dst[i] = dst[i + half] = __float2bfloat16_rn(NAN);
    return;
  }
  const float c = cs[t * half + i], s = sn[t * half + i];
  float ya, yb;
  rotate(__bfloat162float(src[i]), __bfloat162float(src[i + half]), c, s, sign, ya, yb);
  dst[i] = __float2bfloat16_rn(ya);
  dst[i + half] = __float2bfloat16_rn(yb);
}

// 8 pairs, as rope_pair: elements i..i+7 of a head (lo) with i+half..i+half+7 (hi), through
// 16-byte loads and stores (src and dst may be the same), their cos/sin through float4 loads.
// The NaN stores are two statements in the rotation's order: a chained *dlo = *dhi = nan
// made nvcc merge the two paths' stores to dhi into four 4-byte stores in the QKV kernels.
template <typename Idx>
__device__ __forceinline__ void rope_pairs8(const uint4* slo, const uint4* shi, uint4* dlo,
                                            uint4* dhi, Idx i, Idx half, int32_t t, int64_t T,
                                            const float* __restrict__ cs,
                                            const float* __restrict__ sn, float sign) {
  if (t < 0 || t >= T) {
    const uint32_t nan2 = detail::pack2(NAN, NAN);
    const uint4 nan = make_uint4(nan2, nan2, nan2, nan2);
    *dlo = nan;
    *dhi = nan;
    return;
  }
  float a[8], b[8], c[8], s[8];
  detail::unpack8(*slo, a);
  detail::unpack8(*shi, b);
  detail::load8(cs + t * half + i, c);
  detail::load8(sn + t * half + i, s);
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const float ae = a[e], be = b[e];
    rotate(ae, be, c[e], s[e], sign, a[e], b[e]);
  }
  *dlo = detail::pack8(a);
  *dhi = detail::pack8(b);
}

__global__ void rope_kernel(RopeParams p, int64_t T, int64_t half, const float* __restrict__ cs,
                            const float* __restrict__ sn, const int32_t* __restrict__ pos,
                            bf16* x) {
  const int64_t pairs = p.M * p.H * half;
  const float sign = p.inverse ? -1.f : 1.f;
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < pairs;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = k % half, mh = k / half, m = mh / p.H;
    bf16* xr = x + mh * 2 * half;
    rope_pair<int64_t>(xr, xr, i, half, pos[m], T, cs, sn, sign);
  }
}

// Vector path (half a multiple of 8, x and the tables 16-byte aligned): 8 pairs per thread,
// elements i..i+7 and i+half..i+half+7 of a head through two uint4 loads and stores, their
// cos/sin through float4 loads.
__global__ void rope_vec_kernel(RopeParams p, int64_t T, int64_t half, const float* __restrict__ cs,
                                const float* __restrict__ sn, const int32_t* __restrict__ pos,
                                bf16* x) {
  const int64_t half8 = half / 8, groups = p.M * p.H * half8;
  const float sign = p.inverse ? -1.f : 1.f;
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < groups;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = (k % half8) * 8, mh = k / half8, m = mh / p.H;
    uint4* lo = reinterpret_cast<uint4*>(x + mh * 2 * half + i);
    uint4* hi = reinterpret_cast<uint4*>(x + mh * 2 * half + i + half);
    rope_pairs8<int64_t>(lo, hi, lo, hi, i, half, pos[m], T, cs, sn, sign);
  }
}

// ---- The fused QKV projection's split (forward) and merge (backward) -------------------
// A token's heads, in the fused row's order: Hq heads of q, Hkv of k, Hkv of v. Each part
// has its own input and output buffer with its own row stride (elements): the forward reads
// the fused row (stride (Hq + 2 Hkv) D for all three) and writes contiguous q, k, v; the
// backward reads contiguous dq, dk, dv and writes the fused row. q and k heads are rotated
// (the forward by +angle, the backward by -angle), v heads copied.
struct QkvParts {
  int64_t M = 0, Hq = 0, Hkv = 0;
  const bf16* in_q = nullptr;
  const bf16* in_k = nullptr;
  const bf16* in_v = nullptr;
  int64_t ld_in_q = 0, ld_in_k = 0, ld_in_v = 0;
  bf16* out_q = nullptr;
  bf16* out_k = nullptr;
  bf16* out_v = nullptr;
  int64_t ld_out_q = 0, ld_out_k = 0, ld_out_v = 0;
  float sign = 1.f;
};

// Head h (of Hq + 2 Hkv) of token m: its source and destination (first element), and
// whether it rotates (q, k) or is copied (v). Selects, not an indexed array: kernel
// parameters indexed at run time would go through local memory.
template <typename Idx>
__device__ __forceinline__ bool qkv_head(const QkvParts& p, Idx m, Idx h, Idx D,
                                         const bf16*& src, bf16*& dst) {
  const Idx Hq = static_cast<Idx>(p.Hq), Hkv = static_cast<Idx>(p.Hkv);
  if (h < Hq) {
    src = p.in_q + m * static_cast<Idx>(p.ld_in_q) + h * D;
    dst = p.out_q + m * static_cast<Idx>(p.ld_out_q) + h * D;
    return true;
  }
  if (h < Hq + Hkv) {
    h -= Hq;
    src = p.in_k + m * static_cast<Idx>(p.ld_in_k) + h * D;
    dst = p.out_k + m * static_cast<Idx>(p.ld_out_k) + h * D;
    return true;
  }
  h -= Hq + Hkv;
  src = p.in_v + m * static_cast<Idx>(p.ld_in_v) + h * D;
  dst = p.out_v + m * static_cast<Idx>(p.ld_out_v) + h * D;
  return false;
}

// One thread per pair, as rope_kernel. Idx: 32-bit arithmetic when every index fits (the
// divisions are cheaper), else 64-bit.
template <typename Idx>
__global__ void rope_qkv_kernel(QkvParts p, int64_t T, int64_t half_, const float* __restrict__ cs,
                                const float* __restrict__ sn, const int32_t* __restrict__ pos) {
  const Idx half = static_cast<Idx>(half_), D = 2 * half;
  const Idx H = static_cast<Idx>(p.Hq + 2 * p.Hkv);
  const Idx pairs = static_cast<Idx>(p.M) * H * half;
  for (Idx k = Idx(blockIdx.x) * blockDim.x + threadIdx.x; k < pairs;
       k += Idx(gridDim.x) * blockDim.x) {
    const Idx i = k % half, mh = k / half, m = mh / H, h = mh % H;
    const bf16* src;
    bf16* dst;
    if (!qkv_head<Idx>(p, m, h, D, src, dst)) {  // v: copied
      dst[i] = src[i];
      dst[i + half] = src[i + half];
      continue;
    }
    rope_pair<Idx>(src, dst, i, half, pos[m], T, cs, sn, p.sign);
  }
}

// 8 pairs per thread, as rope_vec_kernel (half a multiple of 8; every pointer and the
// tables 16-byte aligned; the strides are multiples of D, so of 16 elements).
template <typename Idx>
__global__ void rope_qkv_vec_kernel(QkvParts p, int64_t T, int64_t half_,
                                    const float* __restrict__ cs, const float* __restrict__ sn,
                                    const int32_t* __restrict__ pos) {
  const Idx half = static_cast<Idx>(half_), D = 2 * half, half8 = half / 8;
  const Idx H = static_cast<Idx>(p.Hq + 2 * p.Hkv);
  const Idx groups = static_cast<Idx>(p.M) * H * half8;
  for (Idx k = Idx(blockIdx.x) * blockDim.x + threadIdx.x; k < groups;
       k += Idx(gridDim.x) * blockDim.x) {
    const Idx i = (k % half8) * 8, mh = k / half8, m = mh / H, h = mh % H;
    const bf16* src;
    bf16* dst;
    const bool rot = qkv_head<Idx>(p, m, h, D, src, dst);
    const uint4* slo = reinterpret_cast<const uint4*>(src + i);
    const uint4* shi = reinterpret_cast<const uint4*>(src + i + half);
    uint4* dlo = reinterpret_cast<uint4*>(dst + i);
    uint4* dhi = reinterpret_cast<uint4*>(dst + i + half);
    if (!rot) {
      const uint4 lo = *slo, hi = *shi;
      *dlo = lo;
      *dhi = hi;
      continue;
    }
    rope_pairs8<Idx>(slo, shi, dlo, dhi, i, half, pos[m], T, cs, sn, p.sign);
  }
}

void launch_qkv(const QkvParts& q, const RopeTableCuda& table, const int32_t* pos,
                cudaStream_t stream) {
  const int64_t half = table.half(), H = q.Hq + 2 * q.Hkv;
  const int64_t pairs = q.M * H * half;
  // Every element index (pairs, and the largest pointer offset: M rows of the widest
  // stride) fits 32 bits: 32-bit divisions.
  const int64_t widest = std::max({q.ld_in_q, q.ld_in_k, q.ld_in_v, q.ld_out_q, q.ld_out_k,
                                   q.ld_out_v, 2 * half * H});
  const bool idx32 = q.M * widest < (int64_t{1} << 31) && 2 * pairs < (int64_t{1} << 31);
  const bool vec = half % 8 == 0 && detail::aligned16(table.cos()) &&
                   detail::aligned16(table.sin());
  bool aligned = true;
  for (const void* ptr : {static_cast<const void*>(q.in_q), static_cast<const void*>(q.in_k),
                          static_cast<const void*>(q.in_v), static_cast<const void*>(q.out_q),
                          static_cast<const void*>(q.out_k), static_cast<const void*>(q.out_v)})
    aligned = aligned && detail::aligned16(ptr);
  using Kernel = void (*)(QkvParts, int64_t, int64_t, const float*, const float*, const int32_t*);
  const bool vec8 = vec && aligned;
  const Kernel kernel =
      vec8 ? (idx32 ? rope_qkv_vec_kernel<uint32_t> : rope_qkv_vec_kernel<int64_t>)
           : (idx32 ? rope_qkv_kernel<uint32_t> : rope_qkv_kernel<int64_t>);
  kernel<<<detail::grid_for(vec8 ? pairs / 8 : pairs, kThreads), kThreads, 0, stream>>>(
      q, table.T(), half, table.cos(), table.sin(), pos);
  CUDA_CHECK_LAUNCH();
}

void check_qkv(const char* what, const QkvParams& p, const RopeTableCuda& table) {
  MOBA_CHECK(p.M >= 0 && p.Hq >= 1 && p.Hkv >= 1, what,
             ": need M >= 0 tokens, Hq >= 1 and Hkv >= 1 heads, got M = ", p.M, ", Hq = ", p.Hq,
             ", Hkv = ", p.Hkv);
  MOBA_CHECK(p.M * (p.Hq + 2 * p.Hkv) * table.half() < (int64_t{1} << 60), what, ": too large");
}

// [a, a + na) and [b, b + nb) share a byte.
bool overlap(const bf16* a, int64_t na, const bf16* b, int64_t nb) {
  return a < b + nb && b < a + na;
}

}  // namespace

RopeTableCuda::RopeTableCuda(const model::RopeTable& table) : T_(table.T), half_(table.half) {
  MOBA_CHECK(T_ >= 1 && half_ >= 1, "RopeTableCuda: empty table (T = ", T_, ", D/2 = ", half_, ")");
  const size_t n = static_cast<size_t>(T_ * half_);
  std::vector<float> c(n), s(n);
  for (size_t i = 0; i < n; ++i) {
    c[i] = static_cast<float>(table.cos[i]);
    s[i] = static_cast<float>(table.sin[i]);
  }
  CUDA_CHECK(cudaMalloc(&cos_, n * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&sin_, n * sizeof(float)));
  CUDA_CHECK(cudaMemcpy(cos_, c.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(sin_, s.data(), n * sizeof(float), cudaMemcpyHostToDevice));
}

RopeTableCuda::~RopeTableCuda() {
  cudaFree(cos_);  // no CUDA_CHECK: a destructor must not throw
  cudaFree(sin_);
}

void rope_apply(const RopeParams& p, const RopeTableCuda& table, const int32_t* pos, bf16* x,
                cudaStream_t stream) {
  MOBA_CHECK(p.M >= 0 && p.H >= 1, "rope_apply: need M >= 0 tokens and H >= 1 heads, got M = ",
             p.M, ", H = ", p.H);
  if (p.M == 0) return;
  MOBA_CHECK(pos && x, "rope_apply: null pointer");
  const int64_t pairs = p.M * p.H * table.half();
  if (table.half() % 8 == 0 && detail::aligned16(x) && detail::aligned16(table.cos()) &&
      detail::aligned16(table.sin()))
    rope_vec_kernel<<<detail::grid_for(pairs / 8, kThreads), kThreads, 0, stream>>>(
        p, table.T(), table.half(), table.cos(), table.sin(), pos, x);
  else
    rope_kernel<<<detail::grid_for(pairs, kThreads), kThreads, 0, stream>>>(
        p, table.T(), table.half(), table.cos(), table.sin(), pos, x);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moba::model::cuda

namespace moba::model::cuda {

void rope_split(const QkvParams& p, const RopeTableCuda& table, const int32_t* pos,
                const bf16* qkv, bf16* q, bf16* k, bf16* v, cudaStream_t stream) {
  check_qkv("rope_split", p, table);
  if (p.M == 0) return;
  MOBA_CHECK(pos && qkv && q && k && v, "rope_split: null pointer");
  const int64_t D = 2 * table.half(), W = (p.Hq + 2 * p.Hkv) * D;
  const int64_t nq = p.M * p.Hq * D, nkv = p.M * p.Hkv * D, nf = p.M * W;
  MOBA_CHECK(!overlap(qkv, nf, q, nq) && !overlap(qkv, nf, k, nkv) && !overlap(qkv, nf, v, nkv) &&
                 !overlap(q, nq, k, nkv) && !overlap(q, nq, v, nkv) && !overlap(k, nkv, v, nkv),
             "rope_split: qkv, q, k and v must not overlap");
  QkvParts s;
  s.M = p.M, s.Hq = p.Hq, s.Hkv = p.Hkv;
  s.in_q = qkv, s.in_k = qkv + p.Hq * D, s.in_v = qkv + (p.Hq + p.Hkv) * D;
  s.ld_in_q = s.ld_in_k = s.ld_in_v = W;
  s.out_q = q, s.out_k = k, s.out_v = v;
  s.ld_out_q = p.Hq * D, s.ld_out_k = s.ld_out_v = p.Hkv * D;
  s.sign = 1.f;
  launch_qkv(s, table, pos, stream);
}

void rope_merge(const QkvParams& p, const RopeTableCuda& table, const int32_t* pos,
                const bf16* dq, const bf16* dk, const bf16* dv, bf16* dqkv, cudaStream_t stream) {
  check_qkv("rope_merge", p, table);
  if (p.M == 0) return;
  MOBA_CHECK(pos && dq && dk && dv && dqkv, "rope_merge: null pointer");
  const int64_t D = 2 * table.half(), W = (p.Hq + 2 * p.Hkv) * D;
  const int64_t nq = p.M * p.Hq * D, nkv = p.M * p.Hkv * D, nf = p.M * W;
  MOBA_CHECK(!overlap(dqkv, nf, dq, nq) && !overlap(dqkv, nf, dk, nkv) &&
                 !overlap(dqkv, nf, dv, nkv),
             "rope_merge: dqkv must not overlap dq, dk or dv");
  QkvParts s;
  s.M = p.M, s.Hq = p.Hq, s.Hkv = p.Hkv;
  s.in_q = dq, s.in_k = dk, s.in_v = dv;
  s.ld_in_q = p.Hq * D, s.ld_in_k = s.ld_in_v = p.Hkv * D;
  s.out_q = dqkv, s.out_k = dqkv + p.Hq * D, s.out_v = dqkv + (p.Hq + p.Hkv) * D;
  s.ld_out_q = s.ld_out_k = s.ld_out_v = W;
  s.sign = -1.f;  // the backward: dx = R^T dy
  launch_qkv(s, table, pos, stream);
}

}  // namespace moba::model::cuda
