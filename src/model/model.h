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
//
// Context parallel (set_context_parallel; docs/distributed.md): the R ranks of a group
// each hold a contiguous shard of one sequence and together compute its loss and gradients.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "attention/layout.h"
#include "dist/communicator.h"
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
  // token, LM head included) plus attention over the pairs actually attended. Under
  // context parallel, this rank's part (the ranks' sum is the whole sequence's).
  double last_flops() const { return last_flops_; }

  // Context parallel (issue 14; docs/distributed.md, "Context parallel"): with a group
  // `comm` of R ranks (null: off, the default), one sequence of T = R x T_r tokens is
  // split over them, rank r = comm->rank() holding positions [r T_r, (r + 1) T_r). Then:
  //  - forward() takes a Batch of B = 1 row holding this rank's shard, T_r inputs and
  //    targets (its T_r + 1 tokens: the next shard's first input is its last target) and
  //    its part of the loss mask; one document (cu_seqlens empty or {0, T_r}): packed
  //    documents are not supported. RoPE positions are global, r T_r + t; T_r is a whole
  //    number of MoBA blocks when a layer runs MoBA, and R x T_r <= model.seq_len.
  //  - forward() and backward() are collective: every rank calls them, in the same order,
  //    with its own shard. MoBA layers fetch the blocks their queries select
  //    (dist/context_parallel.h), full layers run ring attention (dist/ring_attention.h),
  //    each keeping its saved state per layer until the backward.
  //  - forward() returns, on every rank alike, the mean loss over ALL ranks' counted
  //    positions (the ranks all-gather their counts and loss sums); token_losses() is this
  //    rank's T_r. backward() scales by 1 / (all ranks' counted positions), so that the
  //    SUM over the ranks of their gradients is the whole sequence's: grads holds this
  //    rank's part and is not reduced here; the caller sums it over the ranks (as the
  //    data-parallel gradient reduction does, without its 1 / R).
  //  - Bad inputs throw moba::Error on every rank alike (a header all-gathered first):
  //    B != 1, packed documents, shards of different lengths or not of whole blocks, the
  //    whole sequence longer than model.seq_len, no counted position on any rank, and
  //    force_selections (not supported under context parallel). An error on one rank only
  //    (a token id out of range, a parameter array of the wrong size) is thrown there and
  //    the others fail at their next collective (communicator.h).
  // The CPU model passes host buffers: the group must take host memory (FakeGroup). A group
  // of one rank runs the single-process attention, so it equals the plain model bit for
  // bit. The Communicator is not owned; it must outlive its use.
  void set_context_parallel(dist::Communicator* comm) { cp_ = comm; }
  dist::Communicator* context_parallel() const { return cp_; }

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
  int64_t counted_ = 0;  // positions in the loss (context parallel: over all ranks)
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
  dist::Communicator* cp_ = nullptr;          // set_context_parallel(); not owned
  dist::Communicator* cp_forward_ = nullptr;  // the group of the last forward

  // Context parallel: the mean of all ranks' loss sums over `counted` (collective).
  double context_parallel_loss(double local_sum, int64_t counted);
};

extern template class Model<float>;
extern template class Model<double>;

}  // namespace moba::model
