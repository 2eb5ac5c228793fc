#include "dist/context_parallel_cuda.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "attention/cuda/attention_cuda.h"
#include "core/cuda_check.cuh"
#include "core/error.h"
#include "dist/shard_checks.h"
#include "model/cuda/dev_buf.h"

namespace moba::dist::cuda {
namespace {

using model::cuda::DevBuf;
namespace acu = attn::cuda;

constexpr const char* kWhat = "context parallel (GPU)";

int blocks_for(size_t n, int threads) {
  return static_cast<int>(std::min<size_t>((n + threads - 1) / threads, size_t{1} << 20));
}

// wanted[j] = 1 for every block j < b0 (an earlier rank's) that a selection entry names.
__global__ void mark_wanted_kernel(const int32_t* __restrict__ sel, size_t n, int32_t b0,
                                   uint8_t* __restrict__ wanted) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n;
       i += size_t{gridDim.x} * blockDim.x) {
    const int32_t j = sel[i];
    if (j >= 0 && j < b0) wanted[j] = 1;
  }
}

// The compact sequence's selection, (F S + T_r, Hq, K), F the leading blocks (fetched, and
// zero blocks before them): the F S leading rows select their own block only; the shard's
// rows their selection with block j < b0 at remap[j] (its place among the leading blocks)
// and block j >= b0 at F + j - b0. Ascending order and the current block last
// are kept; -1 padding stays -1.
__global__ void remap_selection_kernel(const int32_t* __restrict__ sel,
                                       const int32_t* __restrict__ remap, int32_t b0, int32_t F,
                                       int64_t S, int64_t lead_rows, int64_t per_row, int64_t K,
                                       size_t n, int32_t* __restrict__ selc) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n;
       i += size_t{gridDim.x} * blockDim.x) {
    const int64_t row = static_cast<int64_t>(i) / per_row;
    int32_t out;
    if (row < lead_rows) {
      out = (static_cast<int64_t>(i) % K == 0) ? static_cast<int32_t>(row / S) : -1;
    } else {
      const int32_t j = sel[i - static_cast<size_t>(lead_rows * per_row)];
      out = j < 0 ? -1 : (j < b0 ? remap[j] : F + (j - b0));
    }
    selc[i] = out;
  }
}

// dst[n] = src's block (ids[n] - first) for n < count: blocks of `blk` contiguous elements
// (a block's S rows of Hkv x D), copied 16 bytes at a time (blk is a multiple of 8).
__global__ void gather_blocks_kernel(const bf16* __restrict__ src, const int32_t* __restrict__ ids,
                                     int32_t first, int64_t blk, size_t count,
                                     bf16* __restrict__ dst) {
  const int64_t vecs = blk / 8;
  const size_t n_all = count * static_cast<size_t>(vecs);
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n_all;
       i += size_t{gridDim.x} * blockDim.x) {
    const size_t n = i / static_cast<size_t>(vecs), e = i % static_cast<size_t>(vecs);
    const int64_t b = ids[n] - first;
    reinterpret_cast<int4*>(dst)[n * vecs + e] =
        reinterpret_cast<const int4*>(src)[static_cast<size_t>(b) * vecs + e];
  }
}

// Block blocks[u] of g (the owner's own gradient, bf16) plus the returned gradients of that
// block, slots [offs[u], offs[u+1]) of ret in that order, summed in fp32 and rounded once.
__global__ void add_returned_kernel(bf16* __restrict__ g, const int32_t* __restrict__ blocks,
                                    const int32_t* __restrict__ offs,
                                    const int32_t* __restrict__ slots,
                                    const bf16* __restrict__ ret, int64_t blk, size_t units) {
  const size_t n_all = units * static_cast<size_t>(blk);
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n_all;
       i += size_t{gridDim.x} * blockDim.x) {
    const size_t u = i / static_cast<size_t>(blk), e = i % static_cast<size_t>(blk);
    const size_t at = static_cast<size_t>(blocks[u]) * static_cast<size_t>(blk) + e;
    float acc = __bfloat162float(g[at]);
    for (int32_t t = offs[u]; t < offs[u + 1]; ++t)
      acc += __bfloat162float(ret[static_cast<size_t>(slots[t]) * static_cast<size_t>(blk) + e]);
    g[at] = __float2bfloat16(acc);
  }
}

template <typename T>
T* grow(DevBuf& b, size_t n) {
  b.reserve(std::max<size_t>(n, 1) * sizeof(T));
  return b.as<T>();
}
template <typename T>
void upload(DevBuf& b, const std::vector<T>& h, cudaStream_t stream) {
  T* d = grow<T>(b, h.size());
  if (!h.empty())
    CUDA_CHECK(cudaMemcpyAsync(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice, stream));
}

// bf16 buffers travel as int32 pairs (every count here is even: D is).
std::span<const int32_t> words(const bf16* p, size_t n) {
  return {reinterpret_cast<const int32_t*>(p), n / 2};
}
std::span<int32_t> words(bf16* p, size_t n) { return {reinterpret_cast<int32_t*>(p), n / 2}; }
std::vector<size_t> times(const std::vector<size_t>& counts, size_t f) {
  std::vector<size_t> out(counts.size());
  for (size_t i = 0; i < counts.size(); ++i) out[i] = counts[i] * f;
  return out;
}
size_t sum(const std::vector<size_t>& v) { return std::accumulate(v.begin(), v.end(), size_t{0}); }

void sync(cudaStream_t stream) { CUDA_CHECK(cudaStreamSynchronize(stream)); }

// Whether `plan` (may be null) was built for this layout, configuration and scale.
bool plan_fits(const acu::Plan* plan, const attn::Layout& l, const attn::MobaConfig& cfg,
               const attn::Options& opt) {
  return plan && plan->layout().cu_seqlens == l.cu_seqlens &&
         plan->layout().num_q_heads == l.num_q_heads &&
         plan->layout().num_kv_heads == l.num_kv_heads && plan->layout().head_dim == l.head_dim &&
         plan->config().block_size == cfg.block_size && plan->config().top_k == cfg.top_k &&
         plan->scale() == static_cast<float>(opt.scale_for(l)) &&
         plan->fwd_chunk_option() == opt.fwd_chunk_tokens;
}

}  // namespace

struct MobaContextParallelState::Impl {
  std::unique_ptr<acu::Plan> shard_plan, compact_plan;
  // The forward's: the gathered split means, the shard's selection, the wanted map and the
  // remap table (b0 entries), the fetched and the asked ids, the replies.
  DevBuf means_all, sel, wanted, remap, ids, asked, reply_k, reply_v;
  // The compact sequence (F S + T_r rows): q, k, v, out, lse, selection; the backward's.
  DevBuf qc, kc, vc, outc, lsec, selc, doutc, dqc, dkc, dvc, ret_k, ret_v;
  // The backward's sum of returned gradients: the distinct served blocks (local ids), their
  // slots' offsets and the slots in order.
  DevBuf add_blocks, add_offs, add_slots;
  std::vector<int32_t> asked_host;  // the served blocks' ids, by asking rank in its order
  int64_t b0 = 0;                   // this shard's first block
  int64_t pad = 0;                  // zero blocks before the fetched ones in the compact sequence

  size_t bytes() const {
    size_t n = 0;
    for (const DevBuf* b : {&means_all, &sel, &wanted, &remap, &ids, &asked, &reply_k, &reply_v,
                            &qc, &kc, &vc, &outc, &lsec, &selc, &doutc, &dqc, &dkc, &dvc,
                            &ret_k, &ret_v, &add_blocks, &add_offs, &add_slots})
      n += b->bytes;
    if (shard_plan) n += shard_plan->workspace_bytes();
    if (compact_plan) n += compact_plan->workspace_bytes();
    return n;
  }
};

MobaContextParallelState::MobaContextParallelState() : impl_(std::make_unique<Impl>()) {}
MobaContextParallelState::~MobaContextParallelState() = default;
const int32_t* MobaContextParallelState::selection() const { return impl_->sel.as<int32_t>(); }
size_t MobaContextParallelState::device_bytes() const { return impl_->bytes(); }

ContextParallelTraffic moba_forward_context_parallel_cuda(
    Communicator& comm, const attn::Layout& shard, const attn::MobaConfig& cfg,
    const attn::Options& opt, const bf16* q, const bf16* k, const bf16* v, bf16* out,
    float* lse, MobaContextParallelState& state, cudaStream_t stream) {
  cfg.validate();
  shard.validate();
  MOBA_CHECK(shard.batch() == 1, kWhat, ": a rank's shard is part of one sequence, got a layout "
             "of ", shard.batch(), " sequences");
  const int R = comm.size(), me = comm.rank();
  const auto Rz = static_cast<size_t>(R);
  const int64_t T_r = shard.tokens(), S = cfg.block_size, K = cfg.top_k;
  const int64_t Hq = shard.num_q_heads, Hkv = shard.num_kv_heads, D = shard.head_dim;
  MobaContextParallelState::Impl& m = *state.impl_;
  ContextParallelTraffic traffic;
  state.ranks_ = 0;  // not filled until this forward completes

  // 1. The header: all ranks agree on the shape, or all throw the same error.
  const auto header = detail::block_fetch_header(T_r, S, K, Hq, Hkv, D);
  std::vector<int32_t> headers(Rz * header.size());
  comm.all_gather_host(std::span<const int32_t>(header), headers);
  traffic.control_sent = traffic.control_received = (Rz - 1) * sizeof(header);
  detail::check_block_fetch_headers(headers, R);
  MOBA_CHECK(attn::cuda::head_dim_supported(D), kWhat, ": head dim D = ", D,
             " has no compiled kernels");
  const int64_t per_rank = T_r / S, blocks = per_rank * R;
  MOBA_CHECK(blocks * S <= std::numeric_limits<int32_t>::max(), kWhat, ": a sequence of ",
             blocks * S, " tokens does not fit the kernels' int32 positions");
  const int64_t b0 = me * per_rank, pos0 = me * T_r;
  m.b0 = b0;

  // 2. + 3. The block means, gathered in rank order, and the shard's gate over them.
  if (!plan_fits(m.shard_plan.get(), shard, cfg, opt)) {
    sync(stream);  // the old plan's scratch may still be in use
    m.shard_plan.reset();
    m.shard_plan = std::make_unique<acu::Plan>(shard, cfg, opt);
  }
  const size_t sel_n = static_cast<size_t>(T_r * Hq * K);
  int32_t* sel = grow<int32_t>(m.sel, sel_n);
  const size_t mean_n = static_cast<size_t>(per_rank * Hkv * 3 * D);  // one shard's split means
  bf16* means_all = grow<bf16>(m.means_all, mean_n * Rz);
  if (K > 1) {
    const bf16* mine = acu::moba_gate_shard_means(*m.shard_plan, k, stream);
    sync(stream);
    comm.all_gather(words(mine, mean_n), words(means_all, mean_n * Rz));
    traffic.means_sent = traffic.means_received = (Rz - 1) * mean_n * sizeof(bf16);
  }
  acu::moba_gate_shard(*m.shard_plan, q, means_all, pos0, sel, stream);

  // 4. Requests: the earlier ranks' blocks any query selected, ascending = by owner.
  std::vector<uint8_t> wanted(static_cast<size_t>(b0), 0);
  if (b0 > 0) {
    uint8_t* dw = grow<uint8_t>(m.wanted, wanted.size());
    CUDA_CHECK(cudaMemsetAsync(dw, 0, wanted.size(), stream));
    mark_wanted_kernel<<<blocks_for(sel_n, 256), 256, 0, stream>>>(sel, sel_n,
                                                                   static_cast<int32_t>(b0), dw);
    CUDA_CHECK_LAUNCH();
    CUDA_CHECK(cudaMemcpyAsync(wanted.data(), dw, wanted.size(), cudaMemcpyDeviceToHost, stream));
  }
  sync(stream);
  std::vector<int32_t> fetched, remap(static_cast<size_t>(b0), -1);
  std::vector<size_t> want(Rz, 0);
  for (int64_t j = 0; j < b0; ++j)
    if (wanted[static_cast<size_t>(j)]) {
      remap[static_cast<size_t>(j)] = static_cast<int32_t>(fetched.size());  // + pad, below
      fetched.push_back(static_cast<int32_t>(j));
      ++want[static_cast<size_t>(j / per_rank)];
    }
  const auto F = static_cast<int64_t>(fetched.size());
  // The compact sequence's leading blocks: the F fetched, after `pad` blocks of zeros that
  // round their number up to a multiple of b0 / 16 (at most b0), so that the compact plan
  // (its layout, scratch) is reused from one forward to the next while F moves a little.
  const int64_t quantum = std::max<int64_t>(1, (b0 + 15) / 16);
  const int64_t Fp = F == 0 ? 0 : std::min(b0, (F + quantum - 1) / quantum * quantum);
  const int64_t pad = Fp - F;
  for (int32_t& x : remap)
    if (x >= 0) x += static_cast<int32_t>(pad);
  m.pad = pad;
  std::vector<int32_t> want32(Rz), wants(Rz * Rz);  // wants: (asking rank, owner)
  for (size_t p = 0; p < Rz; ++p) want32[p] = static_cast<int32_t>(want[p]);
  comm.all_gather_host(std::span<const int32_t>(want32), wants);
  std::vector<size_t> asked_by(Rz);
  for (size_t p = 0; p < Rz; ++p) asked_by[p] = static_cast<size_t>(wants[p * Rz + static_cast<size_t>(me)]);
  const size_t n_asked = sum(asked_by);
  upload(m.ids, fetched, stream);
  int32_t* asked = grow<int32_t>(m.asked, n_asked);
  sync(stream);
  comm.all_to_all_v(std::span<const int32_t>(m.ids.as<int32_t>(), fetched.size()), want,
                    std::span<int32_t>(asked, n_asked), asked_by);
  m.asked_host.resize(n_asked);
  if (n_asked)
    CUDA_CHECK(cudaMemcpy(m.asked_host.data(), asked, n_asked * sizeof(int32_t),
                          cudaMemcpyDeviceToHost));
  for (int32_t id : m.asked_host)
    MOBA_CHECK(id >= b0 && id < b0 + per_rank, kWhat, ": rank ", me, " was asked for block ", id,
               ", which it does not hold");
  traffic.control_sent += (Rz - 1) * Rz * sizeof(int32_t) + fetched.size() * sizeof(int32_t);
  traffic.control_received += (Rz - 1) * Rz * sizeof(int32_t) + n_asked * sizeof(int32_t);

  // 5. Serve: the asked blocks' K rows, then their V rows; received straight into the front
  // of the compact sequence's k and v.
  const int64_t blk = S * Hkv * D;  // elements of one block's K (or V), all kv heads
  const int64_t Tc = Fp * S + T_r, lead = Fp * S;
  const size_t pad_kv = static_cast<size_t>(pad * blk);  // the zero blocks' elements
  const size_t qn = static_cast<size_t>(Tc * Hq * D), kvn = static_cast<size_t>(Tc * Hkv * D);
  bf16* qc = grow<bf16>(m.qc, qn);
  bf16* kc = grow<bf16>(m.kc, kvn);
  bf16* vc = grow<bf16>(m.vc, kvn);
  bf16* reply_k = grow<bf16>(m.reply_k, n_asked * static_cast<size_t>(blk));
  bf16* reply_v = grow<bf16>(m.reply_v, n_asked * static_cast<size_t>(blk));
  if (n_asked) {
    const size_t vecs = n_asked * static_cast<size_t>(blk / 8);
    gather_blocks_kernel<<<blocks_for(vecs, 256), 256, 0, stream>>>(
        k, asked, static_cast<int32_t>(b0), blk, n_asked, reply_k);
    CUDA_CHECK_LAUNCH();
    gather_blocks_kernel<<<blocks_for(vecs, 256), 256, 0, stream>>>(
        v, asked, static_cast<int32_t>(b0), blk, n_asked, reply_v);
    CUDA_CHECK_LAUNCH();
  }
  sync(stream);
  const size_t wpb = static_cast<size_t>(blk) / 2;  // int32 words per block
  const std::vector<size_t> send_w = times(asked_by, wpb), recv_w = times(want, wpb);
  comm.all_to_all_v(words(reply_k, n_asked * static_cast<size_t>(blk)), send_w,
                    words(kc + pad_kv, static_cast<size_t>(F * blk)), recv_w);
  comm.all_to_all_v(words(reply_v, n_asked * static_cast<size_t>(blk)), send_w,
                    words(vc + pad_kv, static_cast<size_t>(F * blk)), recv_w);
  traffic.blocks_fetched = F * Hkv;
  traffic.blocks_served = static_cast<int64_t>(n_asked) * Hkv;
  traffic.kv_received = static_cast<size_t>(2 * F * blk) * sizeof(bf16);
  traffic.kv_sent = 2 * n_asked * static_cast<size_t>(blk) * sizeof(bf16);

  // 6. The compact sequence and MoBA's forward on it.
  const size_t shard_q = shard.q_elems(), shard_kv = shard.kv_elems();
  CUDA_CHECK(cudaMemsetAsync(qc, 0, (qn - shard_q) * sizeof(bf16), stream));
  if (pad_kv) {  // zeros, not whatever the buffer held (a NaN there would reach the softmax)
    CUDA_CHECK(cudaMemsetAsync(kc, 0, pad_kv * sizeof(bf16), stream));
    CUDA_CHECK(cudaMemsetAsync(vc, 0, pad_kv * sizeof(bf16), stream));
  }
  CUDA_CHECK(cudaMemcpyAsync(qc + (qn - shard_q), q, shard_q * sizeof(bf16),
                             cudaMemcpyDeviceToDevice, stream));
  CUDA_CHECK(cudaMemcpyAsync(kc + (kvn - shard_kv), k, shard_kv * sizeof(bf16),
                             cudaMemcpyDeviceToDevice, stream));
  CUDA_CHECK(cudaMemcpyAsync(vc + (kvn - shard_kv), v, shard_kv * sizeof(bf16),
                             cudaMemcpyDeviceToDevice, stream));
  upload(m.remap, remap, stream);
  const size_t selc_n = static_cast<size_t>(Tc * Hq * K);
  int32_t* selc = grow<int32_t>(m.selc, selc_n);
  remap_selection_kernel<<<blocks_for(selc_n, 256), 256, 0, stream>>>(
      sel, m.remap.as<int32_t>(), static_cast<int32_t>(b0), static_cast<int32_t>(Fp), S, lead,
      Hq * K, K, selc_n, selc);
  CUDA_CHECK_LAUNCH();
  const attn::Layout compact = attn::Layout::batched(1, Tc, Hq, Hkv, D);
  if (!plan_fits(m.compact_plan.get(), compact, cfg, opt)) {
    sync(stream);
    m.compact_plan.reset();
    m.compact_plan = std::make_unique<acu::Plan>(compact, cfg, opt);
  }
  bf16* outc = grow<bf16>(m.outc, qn);
  float* lsec = grow<float>(m.lsec, static_cast<size_t>(Tc * Hq));
  acu::moba_forward(*m.compact_plan, selc, qc, kc, vc, outc, lsec, stream);
  CUDA_CHECK(cudaMemcpyAsync(out, outc + (qn - shard_q), shard_q * sizeof(bf16),
                             cudaMemcpyDeviceToDevice, stream));
  CUDA_CHECK(cudaMemcpyAsync(lse, lsec + lead * Hq, shard.lse_elems() * sizeof(float),
                             cudaMemcpyDeviceToDevice, stream));

  state.shard_ = shard;
  state.cfg_ = cfg;
  state.rank_ = me;
  state.ranks_ = R;
  state.fetched_ = std::move(fetched);
  state.fetched_per_owner_ = std::move(want);
  state.served_per_rank_ = std::move(asked_by);
  return traffic;
}

ContextParallelTraffic moba_backward_context_parallel_cuda(
    Communicator& comm, MobaContextParallelState& state, const bf16* dout, bf16* dq, bf16* dk,
    bf16* dv, cudaStream_t stream) {
  MOBA_CHECK(state.filled(), kWhat, " backward: the state is empty; pass the "
             "MobaContextParallelState that moba_forward_context_parallel_cuda filled on this rank");
  const int R = comm.size(), me = comm.rank();
  MOBA_CHECK(state.ranks_ == R && state.rank_ == me, kWhat, " backward: the state is rank ",
             state.rank_, "'s of a group of ", state.ranks_, ", but this is rank ", me, " of ", R);
  MobaContextParallelState::Impl& m = *state.impl_;
  const attn::Layout& shard = state.shard_;
  const int64_t S = state.cfg_.block_size, Hq = shard.num_q_heads, Hkv = shard.num_kv_heads,
                D = shard.head_dim;
  const auto F = static_cast<int64_t>(state.fetched_.size());
  const int64_t Tc = m.compact_plan->layout().tokens(), blk = S * Hkv * D;
  const size_t pad_kv = static_cast<size_t>(m.pad * blk);
  const size_t qn = static_cast<size_t>(Tc * Hq * D), kvn = static_cast<size_t>(Tc * Hkv * D);
  const size_t shard_q = shard.q_elems(), shard_kv = shard.kv_elems();
  ContextParallelTraffic traffic;

  // MoBA's backward on the compact sequence, dout = 0 on the leading rows.
  bf16* doutc = grow<bf16>(m.doutc, qn);
  bf16* dqc = grow<bf16>(m.dqc, qn);
  bf16* dkc = grow<bf16>(m.dkc, kvn);
  bf16* dvc = grow<bf16>(m.dvc, kvn);
  CUDA_CHECK(cudaMemsetAsync(doutc, 0, (qn - shard_q) * sizeof(bf16), stream));
  CUDA_CHECK(cudaMemcpyAsync(doutc + (qn - shard_q), dout, shard_q * sizeof(bf16),
                             cudaMemcpyDeviceToDevice, stream));
  acu::moba_backward(*m.compact_plan, m.selc.as<int32_t>(), m.qc.as<bf16>(), m.kc.as<bf16>(),
                     m.vc.as<bf16>(), m.outc.as<bf16>(), m.lsec.as<float>(), doutc, dqc, dkc,
                     dvc, stream);
  CUDA_CHECK(cudaMemcpyAsync(dq, dqc + (qn - shard_q), shard_q * sizeof(bf16),
                             cudaMemcpyDeviceToDevice, stream));
  CUDA_CHECK(cudaMemcpyAsync(dk, dkc + (kvn - shard_kv), shard_kv * sizeof(bf16),
                             cudaMemcpyDeviceToDevice, stream));
  CUDA_CHECK(cudaMemcpyAsync(dv, dvc + (kvn - shard_kv), shard_kv * sizeof(bf16),
                             cudaMemcpyDeviceToDevice, stream));

  // The fetched blocks' gradients back to their owners (the forward's exchange reversed).
  const size_t n_asked = m.asked_host.size();
  bf16* ret_k = grow<bf16>(m.ret_k, n_asked * static_cast<size_t>(blk));
  bf16* ret_v = grow<bf16>(m.ret_v, n_asked * static_cast<size_t>(blk));
  const size_t wpb = static_cast<size_t>(blk) / 2;
  const std::vector<size_t> send_w = times(state.fetched_per_owner_, wpb),
                            recv_w = times(state.served_per_rank_, wpb);
  sync(stream);
  comm.all_to_all_v(words(static_cast<const bf16*>(dkc + pad_kv), static_cast<size_t>(F * blk)),
                    send_w, words(ret_k, n_asked * static_cast<size_t>(blk)), recv_w);
  comm.all_to_all_v(words(static_cast<const bf16*>(dvc + pad_kv), static_cast<size_t>(F * blk)),
                    send_w, words(ret_v, n_asked * static_cast<size_t>(blk)), recv_w);
  traffic.blocks_fetched = F * Hkv;
  traffic.blocks_served = static_cast<int64_t>(n_asked) * Hkv;
  traffic.kv_sent = static_cast<size_t>(2 * F * blk) * sizeof(bf16);
  traffic.kv_received = 2 * n_asked * static_cast<size_t>(blk) * sizeof(bf16);

  // Each served block's own gradient plus the returned ones, in rank order (the slots are
  // in asking-rank order, each rank's in its request order), in fp32, rounded once.
  if (n_asked) {
    std::vector<std::vector<int32_t>> slots_of(static_cast<size_t>(shard.tokens() / S));
    for (size_t n = 0; n < n_asked; ++n)
      slots_of[static_cast<size_t>(m.asked_host[n] - m.b0)].push_back(static_cast<int32_t>(n));
    std::vector<int32_t> ublocks, offs{0}, slots;
    for (size_t b = 0; b < slots_of.size(); ++b)
      if (!slots_of[b].empty()) {
        ublocks.push_back(static_cast<int32_t>(b));
        slots.insert(slots.end(), slots_of[b].begin(), slots_of[b].end());
        offs.push_back(static_cast<int32_t>(slots.size()));
      }
    upload(m.add_blocks, ublocks, stream);
    upload(m.add_offs, offs, stream);
    upload(m.add_slots, slots, stream);
    const size_t n_all = ublocks.size() * static_cast<size_t>(blk);
    add_returned_kernel<<<blocks_for(n_all, 256), 256, 0, stream>>>(
        dk, m.add_blocks.as<int32_t>(), m.add_offs.as<int32_t>(), m.add_slots.as<int32_t>(),
        ret_k, blk, ublocks.size());
    CUDA_CHECK_LAUNCH();
    add_returned_kernel<<<blocks_for(n_all, 256), 256, 0, stream>>>(
        dv, m.add_blocks.as<int32_t>(), m.add_offs.as<int32_t>(), m.add_slots.as<int32_t>(),
        ret_v, blk, ublocks.size());
    CUDA_CHECK_LAUNCH();
    sync(stream);  // the host vectors above are freed on return
  }
  return traffic;
}

}  // namespace moba::dist::cuda
