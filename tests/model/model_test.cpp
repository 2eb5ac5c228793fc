// The whole model: gradients against float64 central differences (tied and untied head,
// full, MoBA and layer-wise hybrid attention, packed documents), parameter counts, and
// float against double.
#include "model/model.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "core/random.h"
#include "model/gradcheck.h"

namespace moba::model {
namespace {

ModelConfig tiny(AttentionKind kind, bool tied) {
  ModelConfig c;
  c.vocab_size = 11;
  c.width = 8;
  c.layers = 2;
  c.heads = 4;
  c.kv_heads = 2;
  c.head_dim = 4;
  c.mlp_hidden = 12;
  c.seq_len = 16;
  c.tied_embeddings = tied;
  c.init_std = 0.4;  // large weights: every path carries gradient worth checking
  c.attention.kind = kind;
  c.attention.block_size = 3;
  c.attention.top_k = 2;
  return c;
}

Batch random_batch(int64_t B, int64_t T, int64_t V, uint64_t seed, bool packed) {
  Batch b;
  b.B = B;
  b.T = T;
  std::mt19937_64 gen(seed);
  for (int64_t i = 0; i < B * (T + 1); ++i)
    b.tokens.push_back(static_cast<int32_t>(gen() % static_cast<uint64_t>(V)));
  if (packed) b.cu_seqlens = {0, 5, T, 2 * T};  // row 0 holds two documents
  return b;
}

void check_model(const ModelConfig& cfg, bool packed) {
  Model<double> model(cfg);
  std::vector<double> P(model.layout().total);
  init_params<double>(model.layout(), 7, P);
  const Batch batch = random_batch(2, 14, cfg.vocab_size, 3, packed);
  auto loss = [&] { return model.forward(P, batch, true); };
  std::vector<double> G(P.size(), 0.0);
  loss();
  model.backward(P, G, 1.0);
  const std::vector<double> num = testing::numeric_grad(loss, P);
  // Per tensor, so that a failure names it.
  for (const TensorInfo& t : model.layout().tensors) {
    const std::vector<double> a(G.begin() + t.offset, G.begin() + t.offset + t.size);
    const std::vector<double> n(num.begin() + t.offset, num.begin() + t.offset + t.size);
    testing::expect_close(t.name, a, n, 1e-6, 1e-9);
  }
}

TEST(ModelGrad, FullTied) { check_model(tiny(AttentionKind::full, true), false); }
TEST(ModelGrad, MobaUntiedPacked) { check_model(tiny(AttentionKind::moba, false), true); }
TEST(ModelGrad, HybridLastLayerFull) {
  ModelConfig c = tiny(AttentionKind::moba, true);
  c.attention.full_attention_last_layers = 1;
  check_model(c, true);
}

TEST(ModelGrad, LossScaleAndAccumulation) {
  // backward adds loss_scale * gradient: two half-scaled backwards equal one full one.
  const ModelConfig cfg = tiny(AttentionKind::moba, true);
  Model<double> model(cfg);
  std::vector<double> P(model.layout().total);
  init_params<double>(model.layout(), 1, P);
  const Batch batch = random_batch(2, 14, cfg.vocab_size, 5, false);
  std::vector<double> g1(P.size(), 0.0), g2(P.size(), 0.0);
  model.forward(P, batch, true);
  model.backward(P, g1, 1.0);
  for (int i = 0; i < 2; ++i) {
    model.forward(P, batch, true);
    model.backward(P, g2, 0.5);
  }
  for (size_t i = 0; i < P.size(); ++i) ASSERT_NEAR(g1[i], g2[i], 1e-12 + 1e-12 * std::abs(g1[i]));
}

TEST(ModelForward, FloatMatchesDouble) {
  const ModelConfig cfg = tiny(AttentionKind::moba, false);
  Model<double> md(cfg);
  Model<float> mf(cfg);
  std::vector<double> Pd(md.layout().total);
  init_params<double>(md.layout(), 2, Pd);
  const std::vector<float> Pf(Pd.begin(), Pd.end());
  const Batch batch = random_batch(2, 14, cfg.vocab_size, 9, true);
  const double ld = md.forward(Pd, batch, true), lf = mf.forward(Pf, batch, true);
  EXPECT_NEAR(ld, lf, 1e-4 * std::abs(ld));
}

TEST(ModelForward, SwitchToFullChangesOnlyMobaLayers) {
  // With moba_phase = false a MoBA model computes exactly what the full model computes.
  ModelConfig cm = tiny(AttentionKind::moba, true), cf = tiny(AttentionKind::full, true);
  Model<double> mm(cm), mf(cf);
  std::vector<double> P(mm.layout().total);
  init_params<double>(mm.layout(), 4, P);
  const Batch batch = random_batch(2, 14, cm.vocab_size, 11, false);
  EXPECT_EQ(mm.forward(P, batch, false), mf.forward(P, batch, true));
  EXPECT_NE(mm.forward(P, batch, true), mf.forward(P, batch, true));
  EXPECT_LT(mm.last_flops(), mf.last_flops());
}

TEST(ParamCounts, MatchLayoutAndPaperTable) {
  for (bool tied : {true, false}) {
    const ModelConfig c = tiny(AttentionKind::moba, tied);
    const ParamLayout l = make_param_layout(c);
    const ParamCounts pc = param_counts(c);
    EXPECT_EQ(pc.total, static_cast<int64_t>(l.total));
    EXPECT_EQ(pc.total - pc.non_embedding, (tied ? 1 : 2) * c.vocab_size * c.width);
  }
  // The MoBA paper's 1.1B model (18 heads, 18 layers, width 2304, head dim 128): with
  // Llama's SwiGLU width (8C/3 rounded up to 256) the count lands on its table's 1.1B.
  ModelConfig p;
  p.width = 2304;
  p.layers = 18;
  p.heads = 18;
  p.vocab_size = 32000;
  const double n = static_cast<double>(param_counts(p).non_embedding);
  EXPECT_NEAR(n / 1e9, 1.147, 0.005);
  p.width = 1792;
  p.layers = p.heads = 14;
  EXPECT_NEAR(static_cast<double>(param_counts(p).non_embedding) / 1e6, 546.0, 2.0);
}

}  // namespace
}  // namespace moba::model
