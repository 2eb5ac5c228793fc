#include "model/model.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "attention/stats.h"
#include "core/error.h"
#include "model/context_parallel_header.h"
#include "model/cross_entropy.h"
#include "model/linear.h"
#include "model/rmsnorm.h"
#include "model/swiglu.h"

namespace moba::model {
namespace {

// A forced selection (Model::force_selections) for one layer, checked against the batch's
// layout: sizes, every slot -1 or a block of the token's sequence up to its current block,
// the current block present, no block twice.
attn::Selection checked_selection(int64_t layer, std::vector<int32_t> blocks,
                                  const attn::Layout& lay, const attn::MobaConfig& cfg) {
  const int64_t N = lay.tokens(), Hq = lay.num_q_heads, K = cfg.top_k, S = cfg.block_size;
  const size_t want = static_cast<size_t>(N * Hq * K);
  MOBA_CHECK(blocks.size() == want, "force_selections: layer ", layer, "'s selection holds ",
             blocks.size(), " entries, (B*T, Hq, K) = (", N, ", ", Hq, ", ", K, ") needs ", want);
  attn::Selection sel{K, Hq, std::move(blocks)};
  for (int64_t b = 0; b < lay.batch(); ++b)
    for (int64_t t = 0; t < lay.seq_len(b); ++t) {
      const int64_t tok = lay.seq_begin(b) + t, c = t / S;
      for (int64_t h = 0; h < Hq; ++h) {
        const std::span<const int32_t> row = sel.at(tok, h);
        bool current = false;
        for (int64_t i = 0; i < K; ++i) {
          const int32_t j = row[i];
          MOBA_CHECK(j == -1 || (j >= 0 && j <= c), "force_selections: layer ", layer, ", token ",
                     tok, " (position ", t, " of sequence ", b, "), head ", h, ": block ", j,
                     " is neither -1 nor in [0, ", c, "]");
          for (int64_t i2 = 0; i2 < i; ++i2)
            MOBA_CHECK(j < 0 || row[i2] != j, "force_selections: layer ", layer, ", token ", tok,
                       ", head ", h, ": block ", j, " selected twice");
          current = current || j == c;
        }
        MOBA_CHECK(current, "force_selections: layer ", layer, ", token ", tok, ", head ", h,
                   ": the current block ", c, " is not selected");
      }
    }
  return sel;
}

}  // namespace

template <typename Real>
void Model<Real>::force_selections(std::vector<std::vector<int32_t>> per_layer) {
  MOBA_CHECK(per_layer.empty() || static_cast<int64_t>(per_layer.size()) == cfg_.layers,
             "force_selections: ", per_layer.size(), " layers given, the model has ", cfg_.layers);
  forced_ = std::move(per_layer);
}

template <typename Real>
const attn::Selection* Model<Real>::selection(int64_t layer) const {
  MOBA_CHECK(layer >= 0 && layer < static_cast<int64_t>(caches_.size()), "selection: layer ", layer,
             " is not in [0, ", caches_.size(), ") (a forward must run first)");
  return layer_moba_[layer] ? &caches_[layer].attn.sel : nullptr;
}

template <typename Real>
const attn::Selection* Model<Real>::gate_selection(int64_t layer) const {
  const attn::Selection* sel = selection(layer);
  if (!sel) return nullptr;
  const attn::Selection& g = caches_[layer].attn.gate_sel;
  return g.blocks.empty() ? sel : &g;
}

template <typename Real>
Model<Real>::Model(const ModelConfig& cfg)
    : cfg_(cfg.resolved()),
      layout_(make_param_layout(cfg_)),
      rope_(cfg_.seq_len, cfg_.head_dim, cfg_.rope_theta) {}

template <typename Real>
double Model<Real>::forward(std::span<const Real> params_span, const Batch& batch,
                            bool moba_phase) {
  const ModelConfig& c = cfg_;
  std::vector<std::vector<int32_t>> forced = std::exchange(forced_, {});  // consumed here
  MOBA_CHECK(params_span.size() == layout_.total, "parameter array has ", params_span.size(),
             " elements, the model needs ", layout_.total);
  MOBA_CHECK(batch.T <= c.seq_len, "batch rows hold T = ", batch.T,
             " tokens, more than model.seq_len = ", c.seq_len);
  batch.validate(c.vocab_size);
  counted_ = batch.counted_positions();
  cp_forward_ = cp_;
  if (cp_) {  // collective: the same verdict on every rank
    const bool any_moba = [&] {
      for (int64_t l = 0; l < c.layers; ++l)
        if (layer_uses_moba(c, l, moba_phase)) return true;
      return false;
    }();
    counted_ = check_context_parallel_shards(*cp_, batch, counted_, !forced.empty(), any_moba,
                                             c.attention.block_size, c.seq_len);
  }
  MOBA_CHECK(counted_ > 0, "the batch's loss_mask is all zeros (every target starts another "
             "document): no position to average the loss over");
  loss_mask_ = batch.loss_mask;
  const Real* P = params_span.data();
  const int64_t B = batch.B, T = batch.T, M = B * T, C = c.width, V = c.vocab_size;
  const int64_t F = c.mlp_hidden;
  M_ = M;

  // Inputs, targets, and RoPE positions counted from each document's start.
  inputs_.resize(M);
  targets_.resize(M);
  pos_.resize(M);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      inputs_[b * T + t] = batch.tokens[b * (T + 1) + t];
      targets_[b * T + t] = batch.tokens[b * (T + 1) + t + 1];
    }
  const std::vector<int64_t> cu = batch.boundaries();
  for (size_t d = 0; d + 1 < cu.size(); ++d)
    for (int64_t m = cu[d]; m < cu[d + 1]; ++m) pos_[m] = static_cast<int32_t>(m - cu[d]);
  if (cp_)  // one document per shard: global positions r T_r + t
    for (int64_t m = 0; m < M; ++m) pos_[m] = static_cast<int32_t>(cp_->rank() * T + m);
  attn_layout_ = attn::Layout::varlen(cu, c.heads, c.kv_heads, c.head_dim);
  const attn::MobaConfig moba{c.attention.block_size, c.attention.top_k};

  // x = embed[inputs]
  std::vector<Real> x(static_cast<size_t>(M * C));  // (M, C) residual stream
  for (int64_t m = 0; m < M; ++m)
    std::copy_n(P + layout_.embed + static_cast<size_t>(inputs_[m]) * C, C, &x[m * C]);

  caches_.resize(c.layers);
  layer_moba_.assign(c.layers, false);
  for (int64_t l = 0; l < c.layers; ++l) layer_moba_[l] = layer_uses_moba(c, l, moba_phase);
  // Forced selections, checked before any work (null where the gate runs).
  std::vector<attn::Selection> forced_sel(forced.size());
  for (size_t l = 0; l < forced.size(); ++l) {
    if (forced[l].empty()) continue;
    MOBA_CHECK(layer_moba_[l], "force_selections: layer ", l,
               " runs full attention in this forward; its selection must be empty");
    forced_sel[l] =
        checked_selection(static_cast<int64_t>(l), std::move(forced[l]), attn_layout_, moba);
  }
  double attn_flops = 0.0;
  std::vector<Real> y(static_cast<size_t>(M * C));  // (M, C) sub-layer output
  for (int64_t l = 0; l < c.layers; ++l) {
    const LayerOffsets& o = layout_.layers[l];
    LayerCache& lc = caches_[l];
    lc.x_in = x;
    lc.xn1.resize(M * C);
    lc.rstd1.resize(M);
    rmsnorm_forward(M, C, c.norm_eps, x.data(), P + o.attn_norm, lc.xn1.data(), lc.rstd1.data());
    attention_forward(
        attn_layout_, layer_moba_[l] ? &moba : nullptr, rope_, pos_.data(), C, P,
        AttentionWeights{o.wq, o.wk, o.wv, o.wo}, lc.xn1.data(), y.data(), lc.attn,
        forced_sel.empty() || forced_sel[l].blocks.empty() ? nullptr : &forced_sel[l], cp_);
    attn_flops += attn::attention_fwd_bwd_flops(lc.attn.pairs, c.head_dim);
    for (int64_t i = 0; i < M * C; ++i) x[i] += y[i];
    lc.x_mid = x;
    lc.xn2.resize(M * C);
    lc.rstd2.resize(M);
    rmsnorm_forward(M, C, c.norm_eps, x.data(), P + o.mlp_norm, lc.xn2.data(), lc.rstd2.data());
    lc.a.resize(M * F);
    lc.b.resize(M * F);
    lc.h.resize(M * F);
    linear_forward(M, C, F, lc.xn2.data(), P + o.w_gate, lc.a.data());
    linear_forward(M, C, F, lc.xn2.data(), P + o.w_up, lc.b.data());
    swiglu_forward(M * F, lc.a.data(), lc.b.data(), lc.h.data());
    linear_forward(M, F, C, lc.h.data(), P + o.w_down, y.data());
    for (int64_t i = 0; i < M * C; ++i) x[i] += y[i];
  }

  x_final_ = std::move(x);
  xn_final_.resize(M * C);
  rstd_final_.resize(M);
  rmsnorm_forward(M, C, c.norm_eps, x_final_.data(), P + layout_.final_norm, xn_final_.data(),
                  rstd_final_.data());
  probs_.resize(M * V);
  linear_forward(M, C, V, xn_final_.data(), P + layout_.lm_head, probs_.data());
  if (keep_logits_) logits_.assign(probs_.begin(), probs_.end());
  losses_.resize(M);
  cross_entropy_forward(M, V, probs_.data(), targets_.data(), losses_.data());
  double sum = 0.0;
  if (loss_mask_.empty()) {
    for (Real l : losses_) sum += static_cast<double>(l);
  } else {
    for (int64_t m = 0; m < M; ++m)
      if (loss_mask_[m]) sum += static_cast<double>(losses_[m]);
  }
  last_flops_ = matmul_flops_per_token(c) * static_cast<double>(M) + attn_flops;
  if (cp_) return context_parallel_loss(sum, counted_);
  return sum / static_cast<double>(counted_);
}

template <typename Real>
double Model<Real>::context_parallel_loss(double local_sum, int64_t counted) {
  std::vector<double> sums(static_cast<size_t>(cp_->size()));
  cp_->all_gather(std::span<const double>(&local_sum, 1), sums);
  double total = 0.0;  // in rank order: the same on every rank
  for (double x : sums) total += x;
  return total / static_cast<double>(counted);
}

template <typename Real>
void Model<Real>::backward(std::span<const Real> params_span, std::span<Real> grads_span,
                           double loss_scale) {
  const ModelConfig& c = cfg_;
  MOBA_CHECK(M_ > 0 && !probs_.empty(), "Model::backward needs a forward first");
  MOBA_CHECK(grads_span.size() == layout_.total, "gradient array has ", grads_span.size(),
             " elements, the model needs ", layout_.total);
  const Real* P = params_span.data();
  Real* G = grads_span.data();
  const int64_t M = M_, C = c.width, V = c.vocab_size, F = c.mlp_hidden;
  const attn::MobaConfig moba{c.attention.block_size, c.attention.top_k};

  // Loss -> logits (in place over the probabilities: forward state is spent once).
  cross_entropy_backward(M, V, probs_.data(), targets_.data(),
                         loss_scale / static_cast<double>(counted_),
                         loss_mask_.empty() ? nullptr : loss_mask_.data());
  std::vector<Real> dxn(static_cast<size_t>(M * C));  // (M, C) gradient of a norm's output
  std::vector<Real> dx(static_cast<size_t>(M * C));   // (M, C) gradient of the residual stream
  linear_backward(M, C, V, xn_final_.data(), P + layout_.lm_head, probs_.data(), dxn.data(),
                  G + layout_.lm_head);
  rmsnorm_backward(M, C, x_final_.data(), P + layout_.final_norm, rstd_final_.data(), dxn.data(),
                   dx.data(), G + layout_.final_norm, false);
  probs_.clear();  // the forward state is spent

  std::vector<Real> dh(static_cast<size_t>(M * F)), da(dh.size()), db(dh.size());  // (M, F)
  for (int64_t l = c.layers - 1; l >= 0; --l) {
    const LayerOffsets& o = layout_.layers[l];
    LayerCache& lc = caches_[l];
    // x_out = x_mid + w_down(swiglu(...)): dx flows on unchanged and into the MLP.
    linear_backward(M, F, C, lc.h.data(), P + o.w_down, dx.data(), dh.data(), G + o.w_down);
    swiglu_backward(M * F, lc.a.data(), lc.b.data(), dh.data(), da.data(), db.data());
    linear_backward(M, C, F, lc.xn2.data(), P + o.w_gate, da.data(), dxn.data(), G + o.w_gate,
                    false);
    linear_backward(M, C, F, lc.xn2.data(), P + o.w_up, db.data(), dxn.data(), G + o.w_up, true);
    rmsnorm_backward(M, C, lc.x_mid.data(), P + o.mlp_norm, lc.rstd2.data(), dxn.data(), dx.data(),
                     G + o.mlp_norm, true);
    // x_mid = x_in + attn(rmsnorm(x_in)).
    attention_backward(attn_layout_, layer_moba_[l] ? &moba : nullptr, rope_, pos_.data(), C, P,
                       AttentionWeights{o.wq, o.wk, o.wv, o.wo}, lc.xn1.data(), lc.attn, dx.data(),
                       dxn.data(), G, cp_forward_);
    rmsnorm_backward(M, C, lc.x_in.data(), P + o.attn_norm, lc.rstd1.data(), dxn.data(), dx.data(),
                     G + o.attn_norm, true);
  }
  // Embedding rows gather their tokens' gradients, in token order (deterministic).
  for (int64_t m = 0; m < M; ++m) {
    Real* g = G + layout_.embed + static_cast<size_t>(inputs_[m]) * C;
    for (int64_t i = 0; i < C; ++i) g[i] += dx[m * C + i];
  }
}

template class Model<float>;
template class Model<double>;

}  // namespace moba::model
