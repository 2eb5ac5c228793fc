// The decoder, forward and backward, on the CPU, in float (training) or double (gradient
// checks). The model owns its activations, not its parameters: params and grads are flat
// arrays laid out by layout() (params.h), so the optimizer and checkpoints see one array.
//
//   x = embed[inputs]                                   (M, C), M = B*T
//   for each layer:  x += attn(rmsnorm(x))               full or MoBA, per layer
//                    x += w_down(swiglu(w_gate(n), w_up(n))),  n = rmsnorm(x)
//   logits = rmsnorm(x) lm_head^T                       (M, V)
//   loss = mean of cross_entropy(logits, targets) over the M positions, or over those
//          the batch's loss_mask keeps
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "attention/layout.h"
#include "model/attention_layer.h"
#include "model/batch.h"
#include "model/config.h"
#include "model/params.h"
#include "model/rope.h"

namespace moba::model {

template <typename Real>
class Model {
 public:
  explicit Model(const ModelConfig& cfg);

  const ModelConfig& config() const { return cfg_; }
  const ParamLayout& layout() const { return layout_; }

  // Mean cross-entropy over the batch's B*T targets, or over those with loss_mask 1 when
  // the batch has a mask (a mask with no 1 is a moba::Error: there is no loss to average).
  // moba_phase = false makes every layer use full attention (the MoBA-to-full switch).
  // Keeps what backward() needs.
  double forward(std::span<const Real> params, const Batch& batch, bool moba_phase);
  // Per-token losses of the last forward: (B*T), nats; every position, masked or not.
  std::span<const Real> token_losses() const { return losses_; }
  // Adds loss_scale * d(mean loss)/d(params) of the last forward into grads.
  void backward(std::span<const Real> params, std::span<Real> grads, double loss_scale);

  // With keep_logits(true), forward() also keeps the LM head's logits (B*T, V) before the
  // softmax (`moba logits`, the HF export's check); off by default (a (B*T, V) copy).
  void keep_logits(bool on) { keep_logits_ = on; }
  std::span<const Real> logits() const { return logits_; }

  // FLOPs of the last forward's batch, forward + backward: matmuls (6 per weight and
  // token, LM head included) plus attention over the pairs actually attended.
  double last_flops() const { return last_flops_; }

  // Test hook (the CPU-vs-GPU whole-model test): the next forward() attends the given MoBA
  // selections instead of running the gate, so that the CPU model can follow a GPU forward
  // whose bf16 gate broke a near-tie differently. per_layer holds one entry per layer
  // (size L, else moba::Error): (B*T, Hq, K) int32 as attn::Selection::blocks, or empty to
  // run that layer's own gate. The next forward() consumes it (even one that throws) and
  // checks each entry: a layer running full attention must get an empty one; sizes, and
  // every slot -1 or a block of the token's own sequence no later than its current block,
  // the current block present, no block twice (moba::Error naming the layer otherwise).
  // The gradient is then that of the forced selection (the gate has none anyway).
  void force_selections(std::vector<std::vector<int32_t>> per_layer);
  // The MoBA selection layer l attended in the last forward (forced or its gate's); null
  // when it ran full attention.
  const attn::Selection* selection(int64_t layer) const;
  // What layer l's gate chose on the last forward's own q and k: the attended selection
  // unless forced (then the gate still runs, for comparison only); null for full layers.
  const attn::Selection* gate_selection(int64_t layer) const;

 private:
  struct LayerCache {
    std::vector<Real> x_in;   // (M, C) residual stream entering the block
    std::vector<Real> xn1;    // (M, C) rmsnorm(x_in)
    std::vector<Real> rstd1;  // (M)
    AttentionCache<Real> attn;
    std::vector<Real> x_mid;  // (M, C) x_in + attention
    std::vector<Real> xn2;    // (M, C)
    std::vector<Real> rstd2;  // (M)
    std::vector<Real> a, b;   // (M, F) gate and up projections
    std::vector<Real> h;      // (M, F) silu(a) * b
  };

  ModelConfig cfg_;
  ParamLayout layout_;
  RopeTable rope_;
  // State of the last forward.
  int64_t M_ = 0;
  std::vector<int32_t> inputs_, targets_, pos_;  // (M) each
  std::vector<uint8_t> loss_mask_;                // (M), or empty: every position counts
  int64_t counted_ = 0;                           // positions in the loss
  attn::Layout attn_layout_;
  std::vector<bool> layer_moba_;  // (L)
  std::vector<LayerCache> caches_;
  std::vector<Real> x_final_, xn_final_, rstd_final_;  // (M, C), (M, C), (M)
  std::vector<Real> probs_;                            // (M, V) softmax of the logits
  std::vector<Real> losses_;                           // (M)
  bool keep_logits_ = false;
  std::vector<Real> logits_;  // (M, V) when keep_logits_
  double last_flops_ = 0.0;
  std::vector<std::vector<int32_t>> forced_;  // (L) or empty: force_selections()
};

extern template class Model<float>;
extern template class Model<double>;

}  // namespace moba::model
