// The CPU inference engine: Model::forward's computation (model.cpp), split in two.
// Prefill runs the prompts, packed as documents of one varlen layout, through the
// training layers (attention_forward: the gate and MoBA or dense attention on the whole
// prompts) and keeps each layer's k (after RoPE) and v in its KV cache. Decode runs one
// token per sequence through the same layers, attending the cache with decode_moba or
// decode_dense, which select and attend exactly what the full-sequence forward does at
// that position.
#include "infer/engine_cpu.h"

#include <algorithm>
#include <string>
#include <vector>

#include "attention/decode.h"
#include "core/error.h"
#include "model/attention_layer.h"
#include "model/linear.h"
#include "model/params.h"
#include "model/rmsnorm.h"
#include "model/rope.h"
#include "model/swiglu.h"

namespace moba::infer {
namespace {

template <typename Real>
class CpuEngine final : public Engine {
 public:
  CpuEngine(const model::ModelConfig& cfg, std::span<const float> params,
            const EngineOptions& opt);

  const model::ModelConfig& config() const override { return cfg_; }
  int64_t batch() const override { return B_; }
  int64_t capacity() const override { return T_; }
  int64_t length(int64_t b) const override {
    MOBA_CHECK(b >= 0 && b < B_, "engine: sequence ", b, " is not in [0, ", B_, ")");
    return caches_[0].len(b);
  }
  std::vector<float> prefill(const std::vector<std::vector<int32_t>>& prompts) override;
  std::vector<float> decode(std::span<const int32_t> tokens) override;
  size_t cache_bytes() const override {
    size_t n = 0;
    for (const auto& c : caches_) n += c.bytes();
    return n;
  }

 private:
  // The MLP sub-layer of layer l on M rows: x += w_down(swiglu(w_gate(n), w_up(n))),
  // n = rmsnorm(x).
  void mlp(int64_t l, int64_t M, std::vector<Real>& x);
  // Final norm and LM head on M rows of x: (M, V) as float; last_logits_ keeps them.
  std::vector<float> head(int64_t M, const std::vector<Real>& x);
  void check_token(int32_t id, const char* what, int64_t b, int64_t i) const;

  model::ModelConfig cfg_;
  model::ParamLayout layout_;
  std::vector<Real> P_;  // the parameters, in Real
  int64_t B_ = 0, T_ = 0;
  model::RopeTable rope_;  // positions [0, capacity): past the training context if asked
  attn::MobaConfig moba_;
  std::vector<bool> layer_moba_;             // (L)
  std::vector<attn::KVCache<Real>> caches_;  // (L)
  // A prefill or decode that failed part-way (a non-finite gate score) leaves some
  // layers' caches a token ahead of others: decode refuses until the next prefill.
  bool broken_ = false;
};

template <typename Real>
CpuEngine<Real>::CpuEngine(const model::ModelConfig& cfg, std::span<const float> params,
                           const EngineOptions& opt)
    : cfg_(cfg.resolved()) {
  cfg_.validate();
  layout_ = model::make_param_layout(cfg_);
  MOBA_CHECK(params.size() == layout_.total, "parameter array has ", params.size(),
             " elements, the model needs ", layout_.total);
  MOBA_CHECK(opt.batch >= 1, "inference batch must be >= 1 sequence, got ", opt.batch);
  MOBA_CHECK(opt.capacity >= 0, "inference capacity must be >= 1 token (or 0 for model.seq_len = ",
             cfg_.seq_len, "), got ", opt.capacity);
  P_.assign(params.begin(), params.end());
  B_ = opt.batch;
  T_ = opt.capacity > 0 ? opt.capacity : cfg_.seq_len;
  rope_ = model::RopeTable(T_, cfg_.head_dim, cfg_.rope_theta);
  moba_ = {cfg_.attention.block_size, cfg_.attention.top_k};
  layer_moba_.resize(cfg_.layers);
  caches_.reserve(cfg_.layers);
  for (int64_t l = 0; l < cfg_.layers; ++l) {
    layer_moba_[l] = model::layer_uses_moba(cfg_, l, opt.moba);
    // A full layer never reads block means: one block of the whole capacity keeps them
    // to a single row per sequence.
    caches_.emplace_back(B_, T_, cfg_.kv_heads, cfg_.head_dim,
                         layer_moba_[l] ? moba_.block_size : T_);
  }
}

template <typename Real>
void CpuEngine<Real>::check_token(int32_t id, const char* what, int64_t b, int64_t i) const {
  MOBA_CHECK(id >= 0 && id < cfg_.vocab_size, what, " ", b, " holds token id ", id,
             i >= 0 ? " at position " : "", i >= 0 ? std::to_string(i) : std::string(),
             ", outside the vocabulary [0, ", cfg_.vocab_size, ")");
}

template <typename Real>
void CpuEngine<Real>::mlp(int64_t l, int64_t M, std::vector<Real>& x) {
  const int64_t C = cfg_.width, F = cfg_.mlp_hidden;
  const model::LayerOffsets& o = layout_.layers[l];
  const Real* P = P_.data();
  std::vector<Real> xn(static_cast<size_t>(M * C)), rstd(static_cast<size_t>(M));
  std::vector<Real> a(static_cast<size_t>(M * F)), b(a.size()), h(a.size());
  std::vector<Real> y(xn.size());
  model::rmsnorm_forward(M, C, cfg_.norm_eps, x.data(), P + o.mlp_norm, xn.data(), rstd.data());
  model::linear_forward(M, C, F, xn.data(), P + o.w_gate, a.data());
  model::linear_forward(M, C, F, xn.data(), P + o.w_up, b.data());
  model::swiglu_forward(M * F, a.data(), b.data(), h.data());
  model::linear_forward(M, F, C, h.data(), P + o.w_down, y.data());
  for (size_t i = 0; i < x.size(); ++i) x[i] += y[i];
}

template <typename Real>
std::vector<float> CpuEngine<Real>::head(int64_t M, const std::vector<Real>& x) {
  const int64_t C = cfg_.width, V = cfg_.vocab_size;
  std::vector<Real> xn(static_cast<size_t>(M * C)), rstd(static_cast<size_t>(M));
  std::vector<Real> logits(static_cast<size_t>(M * V));
  model::rmsnorm_forward(M, C, cfg_.norm_eps, x.data(), P_.data() + layout_.final_norm, xn.data(),
                         rstd.data());
  model::linear_forward(M, C, V, xn.data(), P_.data() + layout_.lm_head, logits.data());
  last_logits_.assign(logits.begin(), logits.end());
  return std::vector<float>(logits.begin(), logits.end());
}

template <typename Real>
std::vector<float> CpuEngine<Real>::prefill(const std::vector<std::vector<int32_t>>& prompts) {
  MOBA_CHECK(static_cast<int64_t>(prompts.size()) == B_, "prefill: ", prompts.size(),
             " prompts given, the engine decodes a batch of ", B_);
  std::vector<int64_t> cu{0};
  for (int64_t b = 0; b < B_; ++b) {
    const auto n = static_cast<int64_t>(prompts[b].size());
    MOBA_CHECK(n >= 1, "prefill: prompt ", b, " is empty (a prompt needs at least one token)");
    MOBA_CHECK(n <= T_, "prefill: prompt ", b, " holds ", n,
               " tokens, more than the engine's capacity of ", T_);
    for (int64_t i = 0; i < n; ++i) check_token(prompts[b][i], "prefill: prompt", b, i);
    cu.push_back(cu.back() + n);
  }
  broken_ = true;  // until every layer holds the prompts
  for (auto& c : caches_)
    for (int64_t b = 0; b < B_; ++b) c.reset(b);

  const int64_t M = cu.back(), C = cfg_.width, Hkv = cfg_.kv_heads, D = cfg_.head_dim;
  const attn::Layout lay = attn::Layout::varlen(cu, cfg_.heads, Hkv, D);
  std::vector<int32_t> pos(static_cast<size_t>(M));  // RoPE positions from each prompt's start
  std::vector<Real> x(static_cast<size_t>(M * C));  // (M, C) residual stream
  for (int64_t b = 0; b < B_; ++b)
    for (int64_t i = 0; i < lay.seq_len(b); ++i) {
      const int64_t m = cu[b] + i;
      pos[m] = static_cast<int32_t>(i);
      std::copy_n(P_.data() + layout_.embed + static_cast<size_t>(prompts[b][i]) * C, C, &x[m * C]);
    }
  std::vector<Real> xn(x.size()), rstd(static_cast<size_t>(M)), y(x.size());
  model::AttentionCache<Real> ac;
  for (int64_t l = 0; l < cfg_.layers; ++l) {
    const model::LayerOffsets& o = layout_.layers[l];
    model::rmsnorm_forward(M, C, cfg_.norm_eps, x.data(), P_.data() + o.attn_norm, xn.data(),
                           rstd.data());
    model::attention_forward(lay, layer_moba_[l] ? &moba_ : nullptr, rope_, pos.data(), C,
                             P_.data(), model::AttentionWeights{o.wq, o.wk, o.wv, o.wo},
                             xn.data(), y.data(), ac);
    const int64_t row = Hkv * D;
    for (int64_t b = 0; b < B_; ++b) {
      const size_t first = static_cast<size_t>(cu[b] * row), n = static_cast<size_t>(lay.seq_len(b) * row);
      caches_[l].append(b, lay.seq_len(b), std::span<const Real>(ac.k).subspan(first, n),
                        std::span<const Real>(ac.v).subspan(first, n));
    }
    for (size_t i = 0; i < x.size(); ++i) x[i] += y[i];
    mlp(l, M, x);
  }
  // Logits of each prompt's last token only.
  std::vector<Real> last(static_cast<size_t>(B_ * C));
  for (int64_t b = 0; b < B_; ++b) std::copy_n(&x[(cu[b + 1] - 1) * C], C, &last[b * C]);
  broken_ = false;
  return head(B_, last);
}

template <typename Real>
std::vector<float> CpuEngine<Real>::decode(std::span<const int32_t> tokens) {
  MOBA_CHECK(!broken_, "decode: a previous prefill or decode failed part-way; prefill again");
  MOBA_CHECK(static_cast<int64_t>(tokens.size()) == B_, "decode: ", tokens.size(),
             " tokens given, the engine decodes a batch of ", B_, " (one token per sequence)");
  const int64_t C = cfg_.width, Hq = cfg_.heads, Hkv = cfg_.kv_heads, D = cfg_.head_dim;
  std::vector<int32_t> pos(static_cast<size_t>(B_));  // each new token's position
  for (int64_t b = 0; b < B_; ++b) {
    check_token(tokens[b], "decode: sequence", b, -1);
    pos[b] = static_cast<int32_t>(caches_[0].len(b));
    MOBA_CHECK(pos[b] < T_, "decode: sequence ", b, " is at the engine's capacity of ", T_,
               " tokens");
  }
  std::vector<Real> x(static_cast<size_t>(B_ * C));  // (B, C) residual stream
  for (int64_t b = 0; b < B_; ++b)
    std::copy_n(P_.data() + layout_.embed + static_cast<size_t>(tokens[b]) * C, C, &x[b * C]);
  std::vector<Real> xn(x.size()), rstd(static_cast<size_t>(B_)), y(x.size());
  std::vector<Real> q(static_cast<size_t>(B_ * Hq * D)), out(q.size()), lse(static_cast<size_t>(B_ * Hq));
  std::vector<Real> k(static_cast<size_t>(B_ * Hkv * D)), v(k.size());
  broken_ = true;  // until every layer holds the new tokens
  for (int64_t l = 0; l < cfg_.layers; ++l) {
    const model::LayerOffsets& o = layout_.layers[l];
    const Real* P = P_.data();
    model::rmsnorm_forward(B_, C, cfg_.norm_eps, x.data(), P + o.attn_norm, xn.data(), rstd.data());
    model::linear_forward(B_, C, Hq * D, xn.data(), P + o.wq, q.data());
    model::linear_forward(B_, C, Hkv * D, xn.data(), P + o.wk, k.data());
    model::linear_forward(B_, C, Hkv * D, xn.data(), P + o.wv, v.data());
    model::rope_apply(rope_, B_, Hq, pos.data(), q.data(), false);
    model::rope_apply(rope_, B_, Hkv, pos.data(), k.data(), false);
    const size_t row = static_cast<size_t>(Hkv * D);
    for (int64_t b = 0; b < B_; ++b)
      caches_[l].append(b, 1, std::span<const Real>(k).subspan(b * row, row),
                        std::span<const Real>(v).subspan(b * row, row));
    if (layer_moba_[l])
      attn::decode_moba<Real>(caches_[l], Hq, moba_, {}, q, out, lse);
    else
      attn::decode_dense<Real>(caches_[l], Hq, {}, q, out, lse);
    model::linear_forward(B_, Hq * D, C, out.data(), P + o.wo, y.data());
    for (size_t i = 0; i < x.size(); ++i) x[i] += y[i];
    mlp(l, B_, x);
  }
  broken_ = false;
  return head(B_, x);
}

}  // namespace

std::unique_ptr<Engine> make_cpu_engine(const model::ModelConfig& cfg,
                                        std::span<const float> params, const EngineOptions& opt) {
  if (opt.device == "cpu") return std::make_unique<CpuEngine<float>>(cfg, params, opt);
  MOBA_CHECK(opt.device == "cpu64", "make_cpu_engine: device '", opt.device,
             "' is not a CPU device (cpu or cpu64)");
  return std::make_unique<CpuEngine<double>>(cfg, params, opt);
}

}  // namespace moba::infer
