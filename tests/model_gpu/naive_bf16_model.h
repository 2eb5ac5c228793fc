// The naive bf16 version of the whole decoder, which sets the error bound of the GPU model
// (model_cuda_test.cpp) as naive_bf16.h sets the attention kernels' and gpu_compare.h the
// layer kernels': the CPU layers of src/model in float, every activation and activation
// gradient stored to bf16 where the GPU model stores it (docs/trainer_gpu.md: bf16
// activations and their gradients; fp32 rstd, lse, losses; fp32 weight gradients), the
// attention that of naive_bf16.h (bf16 inputs, P, dS and outputs). Each matmul output is
// rounded once (fp32 accumulation, the residual add or the accumulation into dx fused
// before the rounding, as Matmul does); so is each layer's. Runs on the CPU only.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "attention/gate.h"
#include "attention/layout.h"
#include "attention_gpu/naive_bf16.h"
#include "core/error.h"
#include "model/batch.h"
#include "model/config.h"
#include "model/cross_entropy.h"
#include "model/linear.h"
#include "model/params.h"
#include "model/rmsnorm.h"
#include "model/rope.h"
#include "model/swiglu.h"

namespace moba::test {

struct NaiveModelRun {
  double loss = 0.0;                // mean over the counted positions
  std::vector<float> token_losses;  // (M), every position
  std::vector<float> grads;         // (P) d(mean loss)/d(params), loss_scale 1
};

// One micro-batch forward and backward. P: the parameters (bf16-exact for a fair
// comparison: the GPU multiplies by its bf16 copy). sels: per layer, the MoBA selection to
// attend ((M, Hq, K) as attn::Selection::blocks; the GPU's), empty for full layers.
inline NaiveModelRun naive_bf16_model(const model::ModelConfig& cfg_in, const std::vector<float>& P,
                                      const model::Batch& batch, bool moba_phase,
                                      const std::vector<std::vector<int32_t>>& sels) {
  using namespace moba::model;
  const ModelConfig c = cfg_in.resolved();
  const ParamLayout layout = make_param_layout(c);
  MOBA_CHECK(P.size() == layout.total, "naive_bf16_model: parameter array size");
  MOBA_CHECK(static_cast<int64_t>(sels.size()) == c.layers, "naive_bf16_model: sels size");
  const int64_t B = batch.B, T = batch.T, M = B * T, C = c.width, V = c.vocab_size;
  const int64_t F = c.mlp_hidden, Hq = c.heads, Hkv = c.kv(), D = c.hd(), L = c.layers;
  const int64_t QD = Hq * D, KD = Hkv * D, S = c.attention.block_size;
  const float* W = P.data();
  auto rnd = [](std::vector<float>& x) {
    for (float& e : x) e = round_bf16(e);
  };

  std::vector<int32_t> inputs(M), targets(M), pos(M);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      inputs[b * T + t] = batch.tokens[b * (T + 1) + t];
      targets[b * T + t] = batch.tokens[b * (T + 1) + t + 1];
    }
  const std::vector<int64_t> cu = batch.boundaries();
  for (size_t d = 0; d + 1 < cu.size(); ++d)
    for (int64_t m = cu[d]; m < cu[d + 1]; ++m) pos[m] = static_cast<int32_t>(m - cu[d]);
  const attn::Layout al = attn::Layout::varlen(cu, Hq, Hkv, D);
  const double scale = attn::Options{}.scale_for(al);
  const RopeTable rope(c.seq_len, D, c.rope_theta);
  const int64_t counted = batch.counted_positions();

  struct Layer {
    std::vector<float> x_in, xn1, rstd1, q, k, v, o, x_mid, xn2, rstd2, a, b, h;
    attn::Selection sel;
    bool moba = false;
  };
  std::vector<Layer> ly(static_cast<size_t>(L));
  // y = round(x W^T), or with a residual round(r + x W^T).
  auto lin = [&](int64_t K, int64_t N, const std::vector<float>& x, size_t w, std::vector<float>& y,
                 const std::vector<float>* residual = nullptr) {
    y.resize(static_cast<size_t>(M * N));
    linear_forward<float>(M, K, N, x.data(), W + w, y.data());
    if (residual)
      for (size_t i = 0; i < y.size(); ++i) y[i] += (*residual)[i];
    rnd(y);
  };
  auto norm = [&](const std::vector<float>& x, size_t w, std::vector<float>& y,
                  std::vector<float>& rstd) {
    y.resize(static_cast<size_t>(M * C));
    rstd.resize(static_cast<size_t>(M));
    rmsnorm_forward<float>(M, C, c.norm_eps, x.data(), W + w, y.data(), rstd.data());
    rnd(y);
  };

  // Forward.
  std::vector<float> x(static_cast<size_t>(M * C));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t i = 0; i < C; ++i) x[m * C + i] = W[layout.embed + inputs[m] * C + i];
  for (int64_t l = 0; l < L; ++l) {
    const LayerOffsets& o = layout.layers[l];
    Layer& y = ly[l];
    y.x_in = x;
    norm(x, o.attn_norm, y.xn1, y.rstd1);
    lin(C, QD, y.xn1, o.wq, y.q);
    lin(C, KD, y.xn1, o.wk, y.k);
    lin(C, KD, y.xn1, o.wv, y.v);
    rope_apply<float>(rope, M, Hq, pos.data(), y.q.data(), false);
    rope_apply<float>(rope, M, Hkv, pos.data(), y.k.data(), false);
    rnd(y.q);
    rnd(y.k);
    y.moba = layer_uses_moba(c, l, moba_phase);
    if (y.moba) y.sel = attn::Selection{c.attention.top_k, Hq, sels[l]};
    y.o = naive_bf16(al, S, y.moba ? &y.sel : nullptr, scale, y.q, y.k, y.v, {}).out;
    lin(QD, C, y.o, o.wo, y.x_mid, &x);  // x_mid = x + o Wo^T
    norm(y.x_mid, o.mlp_norm, y.xn2, y.rstd2);
    lin(C, F, y.xn2, o.w_gate, y.a);
    lin(C, F, y.xn2, o.w_up, y.b);
    y.h.resize(y.a.size());
    swiglu_forward<float>(M * F, y.a.data(), y.b.data(), y.h.data());
    rnd(y.h);
    lin(F, C, y.h, o.w_down, x, &y.x_mid);  // x_out = x_mid + h Wd^T
  }
  std::vector<float> xnf, rstdf, logits;
  norm(x, layout.final_norm, xnf, rstdf);
  lin(C, V, xnf, layout.lm_head, logits);

  NaiveModelRun r;
  r.token_losses.resize(static_cast<size_t>(M));
  cross_entropy_forward<float>(M, V, logits.data(), targets.data(), r.token_losses.data());
  double sum = 0.0;
  for (int64_t m = 0; m < M; ++m)
    if (batch.loss_mask.empty() || batch.loss_mask[m]) sum += r.token_losses[m];
  r.loss = sum / static_cast<double>(counted);
  cross_entropy_backward<float>(M, V, logits.data(), targets.data(),
                                1.0 / static_cast<double>(counted),
                                batch.loss_mask.empty() ? nullptr : batch.loss_mask.data());
  rnd(logits);  // dlogits

  // Backward. dx = round(dy W) or round(dx + dy W); dW += dy^T x in float.
  r.grads.assign(layout.total, 0.0f);
  float* G = r.grads.data();
  auto back = [&](int64_t K, int64_t N, const std::vector<float>& xin, size_t w,
                  const std::vector<float>& dy, std::vector<float>& dx, bool accumulate) {
    dx.resize(static_cast<size_t>(M * K));
    linear_backward<float>(M, K, N, xin.data(), W + w, dy.data(), dx.data(), G + w, accumulate);
    rnd(dx);
  };
  std::vector<float> dxn, dx(static_cast<size_t>(M * C)), dh, da, db, dout;
  back(C, V, xnf, layout.lm_head, logits, dxn, false);
  rmsnorm_backward<float>(M, C, x.data(), W + layout.final_norm, rstdf.data(), dxn.data(),
                          dx.data(), G + layout.final_norm, false);
  rnd(dx);
  for (int64_t l = L - 1; l >= 0; --l) {
    const LayerOffsets& o = layout.layers[l];
    Layer& y = ly[l];
    back(F, C, y.h, o.w_down, dx, dh, false);
    da.resize(dh.size());
    db.resize(dh.size());
    swiglu_backward<float>(M * F, y.a.data(), y.b.data(), dh.data(), da.data(), db.data());
    rnd(da);
    rnd(db);
    back(C, F, y.xn2, o.w_gate, da, dxn, false);
    back(C, F, y.xn2, o.w_up, db, dxn, true);
    rmsnorm_backward<float>(M, C, y.x_mid.data(), W + o.mlp_norm, y.rstd2.data(), dxn.data(),
                            dx.data(), G + o.mlp_norm, true);
    rnd(dx);
    back(QD, C, y.o, o.wo, dx, dout, false);
    NaiveResult ar = naive_bf16(al, S, y.moba ? &y.sel : nullptr, scale, y.q, y.k, y.v, dout);
    rope_apply<float>(rope, M, Hq, pos.data(), ar.dq.data(), true);
    rope_apply<float>(rope, M, Hkv, pos.data(), ar.dk.data(), true);
    rnd(ar.dq);
    rnd(ar.dk);
    back(C, QD, y.xn1, o.wq, ar.dq, dxn, false);
    back(C, KD, y.xn1, o.wk, ar.dk, dxn, true);
    back(C, KD, y.xn1, o.wv, ar.dv, dxn, true);
    rmsnorm_backward<float>(M, C, y.x_in.data(), W + o.attn_norm, y.rstd1.data(), dxn.data(),
                            dx.data(), G + o.attn_norm, true);
    rnd(dx);
  }
  for (int64_t m = 0; m < M; ++m)
    for (int64_t i = 0; i < C; ++i) G[layout.embed + inputs[m] * C + i] += dx[m * C + i];
  return r;
}

}  // namespace moba::test
