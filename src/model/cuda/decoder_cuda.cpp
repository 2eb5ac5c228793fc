#include "model/cuda/decoder_cuda.h"

#include <algorithm>
#include <map>
#include <unordered_map>

#include "attention/cuda/attention_cuda.h"
#include "attention/cuda/decode_cuda.h"
#include "core/cuda_check.cuh"
#include "core/error.h"
#include "core/noncopyable.h"
#include "model/cuda/dev_buf.h"
#include "model/cuda/layers_cuda.h"
#include "model/cuda/matmul.h"
#include "model/cuda/model_cuda.h"
#include "model/cuda/model_dims.h"
#include "model/cuda/model_kernels.h"
#include "model/params.h"
#include "model/rope.h"

namespace moba::model::cuda {

// The attention plans' scratch (MoBA's partial outputs: (N, Hq, K-1, D) fp32, 0.8 GB at
// 128K tokens, H 12, D 64), kept from one prefill to the next instead of cudaMalloc'd and
// cudaFree'd by every prefill's plan. Everything runs on the decoder's one stream, so a
// buffer freed by one plan may serve the next at once. A buffer serves a request of at
// least half its size; when cudaMalloc fails the idle buffers are released and it is tried
// once more, so the pool never makes a request fail that would fit without it. The
// inference planner counts this scratch (infer/plan.cpp).
class ScratchPool : NonCopyable {
 public:
  ScratchPool() = default;
  ~ScratchPool() {
    for (const auto& [p, n] : size_) cudaFree(p);
  }
  attn::cuda::DeviceAllocator allocator() {
    return {&ScratchPool::alloc, &ScratchPool::release, this};
  }
  size_t bytes() const { return bytes_; }

 private:
  static void* alloc(size_t bytes, void* ctx) {
    auto* pool = static_cast<ScratchPool*>(ctx);
    auto it = pool->idle_.lower_bound(bytes);
    if (it != pool->idle_.end() && it->first / 2 <= bytes) {
      void* p = it->second;
      pool->idle_.erase(it);
      return p;
    }
    void* p = nullptr;
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
      (void)cudaGetLastError();
      pool->trim();
      if (cudaMalloc(&p, bytes) != cudaSuccess) {
        (void)cudaGetLastError();
        return nullptr;  // the plan reports the failed allocation
      }
    }
    pool->size_[p] = bytes;
    pool->bytes_ += bytes;
    return p;
  }
  static void release(void* p, void* ctx) {
    auto* pool = static_cast<ScratchPool*>(ctx);
    pool->idle_.emplace(pool->size_.at(p), p);
  }
  void trim() {
    CUDA_CHECK(cudaDeviceSynchronize());  // an idle buffer may still be read by the stream
    for (const auto& [n, p] : idle_) {
      cudaFree(p);
      size_.erase(p);
      bytes_ -= n;
    }
    idle_.clear();
  }

  std::multimap<size_t, void*> idle_;       // free buffers by size
  std::unordered_map<void*, size_t> size_;  // every buffer held
  size_t bytes_ = 0;
};

struct DecoderCuda::Impl : ModelDims {
  ModelConfig cfg;
  ParamLayout layout;
  int64_t B = 0, cap = 0;
  std::vector<bool> layer_moba;  // (L)
  bool any_moba = false;

  cudaStream_t stream = nullptr;
  std::unique_ptr<Matmul> mm;
  std::unique_ptr<RopeTableCuda> rope;
  DevBuf P, Pb;  // fp32 (norm weights) and bf16 (matmuls, embedding) parameters

  std::vector<std::unique_ptr<attn::cuda::DecodeCache>> caches;  // (L)
  std::unique_ptr<attn::cuda::DecodePlan> dplan;
  ScratchPool scratch;  // the prefill plans' device scratch

  // Activations for up to cap_M tokens (prefill) or B (decode); reused by every layer.
  int64_t cap_M = 0;
  DevBuf tokens, pos, x, x_mid, xn, rstd, rows, q, k, v, o, lse, sel, h;
  DevBuf x_last, xn_last, rstd_last, logits;  // (B, C), (B, C), (B), (B, V) fp32
  bool prefilled = false;
  bool recording = false;
  std::vector<std::vector<std::vector<int32_t>>> sel_log;  // [b][layer]: (n, Hq, K)

  Impl(const ModelConfig& c, std::span<const float> params, int64_t batch, int64_t capacity,
       bool use_moba)
      : cfg(c.resolved()), layout(make_param_layout(cfg)), B(batch), cap(capacity) {
    cfg.validate();
    check_gpu_config(cfg);
    MOBA_CHECK(B >= 1, "decoder batch = ", B, ": at least one sequence");
    MOBA_CHECK(cap >= 1, "decoder capacity = ", cap, ": at least one token per sequence");
    MOBA_CHECK(params.size() == layout.total, "parameter array has ", params.size(),
               " elements, the model needs ", layout.total);
    set_dims(cfg);
    layer_moba.resize(static_cast<size_t>(L));
    for (int64_t l = 0; l < L; ++l) {
      layer_moba[l] = layer_uses_moba(cfg, l, use_moba);
      any_moba = any_moba || layer_moba[l];
    }
    stream = create_stream_on_device();
    mm = std::make_unique<Matmul>(stream);
    rope = std::make_unique<RopeTableCuda>(RopeTable(cap, D, cfg.rope_theta));
    const size_t n = layout.total;
    P.resize(sizeof(float) * n);
    Pb.resize(sizeof(bf16) * n);
    CUDA_CHECK(cudaMemcpy(P.p, params.data(), P.bytes, cudaMemcpyHostToDevice));
    to_bf16(P.as<float>(), Pb.as<bf16>(), static_cast<int64_t>(n), stream);
    caches.reserve(static_cast<size_t>(L));
    for (int64_t l = 0; l < L; ++l)
      caches.push_back(std::make_unique<attn::cuda::DecodeCache>(B, cap, Hkv, D, moba.block_size));
    dplan = std::make_unique<attn::cuda::DecodePlan>(B, cap, Hq, Hkv, D, moba, attn::Options{});
    x_last.resize(sizeof(bf16) * B * C);
    xn_last.resize(sizeof(bf16) * B * C);
    rstd_last.resize(sizeof(float) * B);
    logits.resize(sizeof(float) * B * V);
    reserve(B);
    CUDA_CHECK(cudaStreamSynchronize(stream));
  }

  ~Impl() {
    if (stream) cudaStreamSynchronize(stream);
    caches.clear();
    dplan.reset();
    mm.reset();
    rope.reset();
    if (stream) cudaStreamDestroy(stream);
  }

  void reserve(int64_t M) {
    if (M <= cap_M) return;
    CUDA_CHECK(cudaStreamSynchronize(stream));
    const size_t m = static_cast<size_t>(M), b2 = sizeof(bf16), f4 = sizeof(float);
    tokens.resize(4 * m);
    pos.resize(4 * m);
    for (DevBuf* d : {&x, &x_mid, &xn}) d->resize(b2 * m * C);
    rstd.resize(f4 * m);
    rows.resize(b2 * m * std::max(QKV, 2 * F));
    q.resize(b2 * m * Hq * D);
    o.resize(b2 * m * Hq * D);
    k.resize(b2 * m * Hkv * D);
    v.resize(b2 * m * Hkv * D);
    lse.resize(f4 * m * Hq);
    sel.resize(any_moba ? 4 * m * Hq * moba.top_k : 0);
    h.resize(b2 * m * F);
    cap_M = M;
  }

  void check_tokens(std::span<const int32_t> ids, const char* what) const {
    for (size_t i = 0; i < ids.size(); ++i)
      MOBA_CHECK(ids[i] >= 0 && ids[i] < V, what, ": token ", i, " is id ", ids[i],
                 ", outside the model's vocabulary [0, ", V, ")");
  }

  // The attention sub-layer's input projections for M tokens at positions pos: q, and k, v
  // into kd, vd ((M, Hkv, D) each).
  void qkv(int64_t M, int64_t l, bf16* kd, bf16* vd) {
    const LayerOffsets& off = layout.layers[l];
    rmsnorm_forward({M, C, static_cast<float>(cfg.norm_eps)}, x.as<bf16>(),
                    P.as<float>() + off.attn_norm, xn.as<bf16>(), rstd.as<float>(), stream);
    mark("rmsnorm");
    mm->forward(M, C, QKV, xn.as<bf16>(), Pb.as<bf16>() + off.wq, rows.as<bf16>());
    mark("matmul_qkv");
    rope_split({M, Hq, Hkv}, *rope, pos.as<int32_t>(), rows.as<bf16>(), q.as<bf16>(), kd, vd,
               stream);
    mark("rope_split");
  }

  // After the attention output o: x += o Wo^T, then x += MLP(rmsnorm(x)).
  void rest_of_block(int64_t M, int64_t l) {
    const LayerOffsets& off = layout.layers[l];
    const bf16* W = Pb.as<bf16>();
    mm->forward(M, Hq * D, C, o.as<bf16>(), W + off.wo, x_mid.as<bf16>(), x.as<bf16>());
    mark("matmul_o");
    rmsnorm_forward({M, C, static_cast<float>(cfg.norm_eps)}, x_mid.as<bf16>(),
                    P.as<float>() + off.mlp_norm, xn.as<bf16>(), rstd.as<float>(), stream);
    mark("rmsnorm");
    mm->forward(M, C, 2 * F, xn.as<bf16>(), W + off.w_gate, rows.as<bf16>());
    mark("matmul_gate_up");
    swiglu_forward_rows(M, F, rows.as<bf16>(), h.as<bf16>(), stream);
    mark("swiglu");
    mm->forward(M, F, C, h.as<bf16>(), W + off.w_down, x.as<bf16>(), x_mid.as<bf16>());
    mark("matmul_down");
  }

  // A phase boundary for `moba bench infer --phases` (attention/cuda's phase timing; the
  // attention launchers mark their own phases in between).
  void mark(const char* name) { attn::cuda::mark_phase(name, stream); }

  // Logits (B, V) fp32 of the B rows in x_last.
  void head() {
    rmsnorm_forward({B, C, static_cast<float>(cfg.norm_eps)}, x_last.as<bf16>(),
                    P.as<float>() + layout.final_norm, xn_last.as<bf16>(), rstd_last.as<float>(),
                    stream);
    mm->forward_f32(B, C, V, xn_last.as<bf16>(), Pb.as<bf16>() + layout.lm_head,
                    logits.as<float>());
  }

  std::vector<float> read_logits() {
    std::vector<float> out(static_cast<size_t>(B * V));
    CUDA_CHECK(cudaMemcpyAsync(out.data(), logits.p, out.size() * sizeof(float),
                               cudaMemcpyDeviceToHost, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
    return out;
  }

  // The gate's selections for M tokens, (M, Hq, K) int32 from sel: waits for the stream.
  std::vector<int32_t> read_selections(int64_t M) {
    std::vector<int32_t> h(static_cast<size_t>(M * Hq * moba.top_k));
    CUDA_CHECK(cudaMemcpyAsync(h.data(), sel.p, 4 * h.size(), cudaMemcpyDeviceToHost, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
    return h;
  }

  std::vector<float> prefill(const std::vector<std::vector<int32_t>>& prompts) {
    MOBA_CHECK(static_cast<int64_t>(prompts.size()) == B, "prefill: ", prompts.size(),
               " prompts for a decoder of batch ", B);
    std::vector<int64_t> cu{0};
    std::vector<int32_t> ids, positions;
    for (int64_t b = 0; b < B; ++b) {
      const std::vector<int32_t>& p = prompts[b];
      MOBA_CHECK(!p.empty(), "prefill: prompt ", b, " is empty");
      MOBA_CHECK(static_cast<int64_t>(p.size()) <= cap, "prefill: prompt ", b, " holds ",
                 p.size(), " tokens, more than the cache's capacity of ", cap);
      check_tokens(p, "prefill");
      ids.insert(ids.end(), p.begin(), p.end());
      for (size_t t = 0; t < p.size(); ++t) positions.push_back(static_cast<int32_t>(t));
      cu.push_back(cu.back() + static_cast<int64_t>(p.size()));
    }
    const int64_t M = cu.back();
    reserve(M);
    prefilled = false;
    if (recording) sel_log.assign(static_cast<size_t>(B), std::vector<std::vector<int32_t>>(L));
    CUDA_CHECK(cudaMemcpyAsync(tokens.p, ids.data(), 4 * M, cudaMemcpyHostToDevice, stream));
    CUDA_CHECK(cudaMemcpyAsync(pos.p, positions.data(), 4 * M, cudaMemcpyHostToDevice, stream));
    attn::cuda::Plan plan(attn::Layout::varlen(cu, Hq, Hkv, D), moba, attn::Options{},
                          scratch.allocator());
    embedding_forward({M, V, C}, tokens.as<int32_t>(), Pb.as<bf16>() + layout.embed, x.as<bf16>(),
                      stream);
    mark("embedding");
    for (int64_t l = 0; l < L; ++l) {
      // One sequence: its packed K and V are rows [0, M) of the layer's cache, so the
      // projections write them there and the attention reads them there (no copy of 2 x M
      // rows a layer); a batch is packed in k, v and copied row range by row range.
      bf16* kd = B == 1 ? caches[l]->k() : k.as<bf16>();
      bf16* vd = B == 1 ? caches[l]->v() : v.as<bf16>();
      qkv(M, l, kd, vd);
      bool means_written = false;  // the cache's block means, by the gate (one sequence)
      if (layer_moba[l]) {
        if (B == 1)
          means_written = attn::cuda::moba_gate(plan, q.as<bf16>(), kd, sel.as<int32_t>(),
                                                caches[l]->means(), cap / moba.block_size, stream);
        else
          attn::cuda::moba_gate(plan, q.as<bf16>(), kd, sel.as<int32_t>(), stream);
        if (recording) {
          const int64_t row = Hq * moba.top_k;
          const std::vector<int32_t> h = read_selections(M);
          for (int64_t b = 0; b < B; ++b)
            sel_log[b][l].assign(h.begin() + cu[b] * row, h.begin() + cu[b + 1] * row);
        }
        attn::cuda::moba_forward(plan, sel.as<int32_t>(), q.as<bf16>(), kd, vd, o.as<bf16>(),
                                 lse.as<float>(), stream);
      } else {
        attn::cuda::dense_forward(plan, q.as<bf16>(), kd, vd, o.as<bf16>(), lse.as<float>(),
                                  stream);
      }
      mark("attention_other");
      if (B == 1) caches[l]->adopt({M}, stream, means_written);
      else caches[l]->fill(cu, kd, vd, stream);
      mark("kv_cache");
      rest_of_block(M, l);
    }
    for (int64_t b = 0; b < B; ++b)
      CUDA_CHECK(cudaMemcpyAsync(x_last.as<bf16>() + b * C, x.as<bf16>() + (cu[b + 1] - 1) * C,
                                 sizeof(bf16) * C, cudaMemcpyDeviceToDevice, stream));
    head();
    mark("head");
    std::vector<float> out = read_logits();  // waits: the plan's memory is freed after it
    prefilled = true;
    return out;
  }

  void step(std::span<const int32_t> ids) {
    MOBA_CHECK(prefilled, "decode: prefill the sequences first");
    MOBA_CHECK(static_cast<int64_t>(ids.size()) == B, "decode: ", ids.size(),
               " tokens for a decoder of batch ", B);
    check_tokens(ids, "decode");
    std::vector<int32_t> positions(static_cast<size_t>(B));
    const std::vector<int64_t>& len = caches[0]->len();
    for (int64_t b = 0; b < B; ++b) {
      MOBA_CHECK(len[b] < cap, "decode: sequence ", b, " is full (", len[b],
                 " tokens, the cache's capacity)");
      positions[b] = static_cast<int32_t>(len[b]);
    }
    CUDA_CHECK(cudaMemcpyAsync(tokens.p, ids.data(), 4 * B, cudaMemcpyHostToDevice, stream));
    CUDA_CHECK(cudaMemcpyAsync(pos.p, positions.data(), 4 * B, cudaMemcpyHostToDevice, stream));
    embedding_forward({B, V, C}, tokens.as<int32_t>(), Pb.as<bf16>() + layout.embed, x.as<bf16>(),
                      stream);
    for (int64_t l = 0; l < L; ++l) {
      qkv(B, l, k.as<bf16>(), v.as<bf16>());
      caches[l]->append(k.as<bf16>(), v.as<bf16>(), stream);
      if (layer_moba[l]) {
        attn::cuda::decode_moba(*dplan, *caches[l], q.as<bf16>(), o.as<bf16>(), lse.as<float>(),
                                recording ? sel.as<int32_t>() : nullptr, stream);
        if (recording) {
          const int64_t row = Hq * moba.top_k;
          const std::vector<int32_t> h = read_selections(B);
          for (int64_t b = 0; b < B; ++b)
            sel_log[b][l].insert(sel_log[b][l].end(), h.begin() + b * row, h.begin() + (b + 1) * row);
        }
      } else {
        attn::cuda::decode_dense(*dplan, *caches[l], q.as<bf16>(), o.as<bf16>(), lse.as<float>(),
                                 stream);
      }
      rest_of_block(B, l);
    }
    CUDA_CHECK(cudaMemcpyAsync(x_last.p, x.p, sizeof(bf16) * B * C, cudaMemcpyDeviceToDevice,
                               stream));
    head();  // (uploads from pageable memory are staged before cudaMemcpyAsync returns)
  }

  size_t cache_bytes() const {
    size_t b = 0;
    for (const auto& c : caches) b += c->bytes();
    return b;
  }
  size_t device_bytes() const {
    size_t b = cache_bytes() + dplan->workspace_bytes() + scratch.bytes() +
               (size_t{32} << 20);  // + matmul ws
    for (const DevBuf* d : {&P, &Pb, &tokens, &pos, &x, &x_mid, &xn, &rstd, &rows, &q, &k, &v,
                            &o, &lse, &sel, &h, &x_last, &xn_last, &rstd_last, &logits})
      b += d->bytes;
    return b;
  }
};

DecoderCuda::DecoderCuda(const ModelConfig& cfg, std::span<const float> params, int64_t batch,
                         int64_t capacity, bool moba)
    : impl_(std::make_unique<Impl>(cfg, params, batch, capacity, moba)) {}
DecoderCuda::~DecoderCuda() = default;

const ModelConfig& DecoderCuda::config() const { return impl_->cfg; }
int64_t DecoderCuda::batch() const { return impl_->B; }
int64_t DecoderCuda::capacity() const { return impl_->cap; }
int64_t DecoderCuda::length(int64_t b) const {
  MOBA_CHECK(b >= 0 && b < impl_->B, "sequence ", b, " is not in [0, ", impl_->B, ")");
  return impl_->caches[0]->len()[b];
}

std::vector<float> DecoderCuda::prefill(const std::vector<std::vector<int32_t>>& prompts) {
  return impl_->prefill(prompts);
}
std::vector<float> DecoderCuda::decode(std::span<const int32_t> tokens) {
  impl_->step(tokens);
  return impl_->read_logits();
}
void DecoderCuda::decode_async(std::span<const int32_t> tokens) { impl_->step(tokens); }
void DecoderCuda::synchronize() { CUDA_CHECK(cudaStreamSynchronize(impl_->stream)); }
void DecoderCuda::record_selections(bool on) {
  impl_->recording = on;
  impl_->sel_log.assign(static_cast<size_t>(impl_->B),
                        std::vector<std::vector<int32_t>>(static_cast<size_t>(impl_->L)));
}
const std::vector<std::vector<int32_t>>& DecoderCuda::selections(int64_t b) const {
  MOBA_CHECK(b >= 0 && b < static_cast<int64_t>(impl_->sel_log.size()), "selections: sequence ",
             b, " is not in [0, ", impl_->sel_log.size(), ") (record_selections first)");
  return impl_->sel_log[b];
}
size_t DecoderCuda::cache_bytes() const { return impl_->cache_bytes(); }
size_t DecoderCuda::device_bytes() const { return impl_->device_bytes(); }

}  // namespace moba::model::cuda
