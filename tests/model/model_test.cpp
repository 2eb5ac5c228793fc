// The whole model: gradients against float64 central differences (tied and untied head,
// full, MoBA and layer-wise hybrid attention, packed documents, a loss mask), the masked
// loss, parameter counts, and float against double.
#include "model/model.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "core/error.h"
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

// The mask a packed loader gives random_batch(2, 14, ..., packed): row 0 holds documents
// [0, 5) and [5, 14), so target 5 (input 4) starts the second one; plus a few other zeros
// so that the test does not depend on where they fall.
std::vector<uint8_t> packed_mask() {
  std::vector<uint8_t> m(2 * 14, 1);
  for (int i : {4, 9, 14, 27}) m[i] = 0;
  return m;
}

void check_model(const ModelConfig& cfg, bool packed, bool masked = false) {
  Model<double> model(cfg);
  std::vector<double> P(model.layout().total);
  init_params<double>(model.layout(), 7, P);
  Batch batch = random_batch(2, 14, cfg.vocab_size, 3, packed);
  if (masked) batch.loss_mask = packed_mask();
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
TEST(ModelGrad, MobaPackedWithLossMask) {
  check_model(tiny(AttentionKind::moba, false), true, true);
}
TEST(ModelGrad, FullTiedWithLossMask) { check_model(tiny(AttentionKind::full, true), true, true); }
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

TEST(ModelLoss, MaskAveragesOnlyTheMaskedInPositions) {
  const ModelConfig cfg = tiny(AttentionKind::moba, true);
  Model<double> model(cfg);
  std::vector<double> P(model.layout().total);
  init_params<double>(model.layout(), 6, P);
  Batch batch = random_batch(2, 14, cfg.vocab_size, 8, true);
  const double unmasked = model.forward(P, batch, true);
  const std::vector<double> per_token(model.token_losses().begin(), model.token_losses().end());
  double all = 0.0;
  for (double l : per_token) all += l;
  EXPECT_EQ(unmasked, all / 28.0);

  batch.loss_mask = packed_mask();
  const double masked = model.forward(P, batch, true);
  double sum = 0.0;
  int n = 0;
  for (size_t m = 0; m < per_token.size(); ++m)
    if (batch.loss_mask[m]) sum += per_token[m], ++n;
  ASSERT_EQ(n, 24);
  EXPECT_EQ(masked, sum / n) << "the mean over the 24 positions with mask 1, in order";
  EXPECT_NE(masked, unmasked);
  // The mask changes what is averaged, never the per-token losses themselves.
  for (size_t m = 0; m < per_token.size(); ++m) EXPECT_EQ(model.token_losses()[m], per_token[m]);

  // An all-ones mask is the unmasked loss, bit for bit; so are the gradients.
  std::vector<double> g_none(P.size(), 0.0), g_ones(P.size(), 0.0);
  batch.loss_mask.clear();
  model.forward(P, batch, true);
  model.backward(P, g_none, 1.0);
  batch.loss_mask.assign(28, 1);
  EXPECT_EQ(model.forward(P, batch, true), unmasked);
  model.backward(P, g_ones, 1.0);
  EXPECT_EQ(g_none, g_ones);
}

TEST(ModelLoss, MaskedOutTargetsDoNotMatter) {
  // Changing the token a masked-out position predicts (and nothing else) changes neither
  // the loss nor the gradient. Target of position 4 is token 5 of row 0, the first token
  // of row 0's second document, so it is an input too: mask position 27 instead, the
  // last target of row 1 (token 14 of row 1, read by no input).
  const ModelConfig cfg = tiny(AttentionKind::moba, false);
  Model<double> model(cfg);
  std::vector<double> P(model.layout().total);
  init_params<double>(model.layout(), 12, P);
  Batch a = random_batch(2, 14, cfg.vocab_size, 13, true);
  a.loss_mask = packed_mask();
  Batch b = a;
  b.tokens[1 * 15 + 14] = (a.tokens[1 * 15 + 14] + 1) % cfg.vocab_size;
  std::vector<double> ga(P.size(), 0.0), gb(P.size(), 0.0);
  const double la = model.forward(P, a, true);
  model.backward(P, ga, 1.0);
  const double lb = model.forward(P, b, true);
  model.backward(P, gb, 1.0);
  EXPECT_EQ(la, lb);
  EXPECT_EQ(ga, gb);
}

TEST(ModelLoss, MaskErrors) {
  const ModelConfig cfg = tiny(AttentionKind::full, true);
  Model<double> model(cfg);
  std::vector<double> P(model.layout().total);
  init_params<double>(model.layout(), 1, P);
  Batch batch = random_batch(2, 14, cfg.vocab_size, 2, false);
  auto message = [&] {
    try {
      model.forward(P, batch, true);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  batch.loss_mask.assign(27, 1);
  EXPECT_NE(message().find("loss_mask holds 27 entries, (B, T) = (2, 14) needs 28"),
            std::string::npos)
      << message();
  batch.loss_mask.assign(28, 2);
  EXPECT_NE(message().find("loss_mask must hold 0 or 1"), std::string::npos) << message();
  // No position left: an error (the trainer adds the step), not a silent zero loss.
  batch.loss_mask.assign(28, 0);
  EXPECT_NE(message().find("loss_mask is all zeros"), std::string::npos) << message();
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

// The test hook of the CPU-vs-GPU comparison (Model::force_selections).
TEST(ModelForcedSelection, GateSelectionIsBitIdenticalAnotherChangesTheLoss) {
  ModelConfig cfg = tiny(AttentionKind::moba, false);
  cfg.layers = 3;
  cfg.attention.full_attention_last_layers = 1;  // layers 0, 1 MoBA; layer 2 full
  Model<double> model(cfg);
  std::vector<double> P(model.layout().total);
  init_params<double>(model.layout(), 21, P);
  const Batch batch = random_batch(2, 14, cfg.vocab_size, 22, true);
  std::vector<double> g0(P.size(), 0.0), g1(P.size(), 0.0), g2(P.size(), 0.0);
  const double l0 = model.forward(P, batch, true);
  model.backward(P, g0, 1.0);
  ASSERT_NE(model.selection(0), nullptr);
  ASSERT_NE(model.selection(1), nullptr);
  EXPECT_EQ(model.selection(2), nullptr) << "the last layer runs full attention";
  std::vector<std::vector<int32_t>> sels = {
      model.selection(0)->blocks, model.selection(1)->blocks, {}};
  EXPECT_EQ(model.gate_selection(0)->blocks, sels[0]) << "unforced: the gate's own choice";

  // The gate's own selection, forced: the very same bits.
  model.force_selections(sels);
  EXPECT_EQ(model.forward(P, batch, true), l0);
  model.backward(P, g1, 1.0);
  EXPECT_EQ(g1, g0);
  EXPECT_EQ(model.selection(1)->blocks, sels[1]);
  // Consumed: the next forward runs the gate again.
  EXPECT_EQ(model.forward(P, batch, true), l0);

  // Another valid selection for layer 1: every row of a token past its first block keeps
  // its current block and swaps one past block for another (or adds block 0 where a slot
  // is free), so the loss changes while layer 0 still runs its gate.
  std::vector<int32_t> other = sels[1];
  const attn::Layout lay =
      attn::Layout::varlen(batch.boundaries(), cfg.heads, cfg.kv_heads, cfg.head_dim);
  const int64_t K = cfg.attention.top_k, S = cfg.attention.block_size;
  int64_t changed = 0;
  for (int64_t b = 0; b < lay.batch(); ++b)
    for (int64_t t = 0; t < lay.seq_len(b); ++t) {
      const int64_t tok = lay.seq_begin(b) + t, c = t / S;
      if (c < 2) continue;  // with K = 2 only a token with two past blocks has a choice
      for (int64_t h = 0; h < cfg.heads; ++h) {
        int32_t* row = &other[(tok * cfg.heads + h) * K];
        // K = 2: slot 0 is the chosen past block, slot 1 the current block.
        ASSERT_EQ(row[1], c);
        row[0] = static_cast<int32_t>((row[0] + 1) % c);
        ++changed;
      }
    }
  ASSERT_GT(changed, 0);
  model.force_selections({{}, other, {}});
  const double l_other = model.forward(P, batch, true);
  model.backward(P, g2, 1.0);
  EXPECT_NE(l_other, l0);
  EXPECT_NE(g2, g0);
  EXPECT_EQ(model.selection(1)->blocks, other);
  EXPECT_EQ(model.gate_selection(1)->blocks, sels[1])
      << "forced: the gate still runs on the same q, k (layer 0 is unchanged)";
  EXPECT_EQ(model.selection(0)->blocks, sels[0]);
}

TEST(ModelForcedSelection, Errors) {
  ModelConfig cfg = tiny(AttentionKind::moba, true);
  cfg.attention.full_attention_last_layers = 1;  // layer 0 MoBA, layer 1 full
  Model<double> model(cfg);
  std::vector<double> P(model.layout().total);
  init_params<double>(model.layout(), 3, P);
  const Batch batch = random_batch(2, 14, cfg.vocab_size, 4, false);
  model.forward(P, batch, true);
  const std::vector<int32_t> good = model.selection(0)->blocks;  // (28, 4, 2)
  auto message = [&](std::vector<std::vector<int32_t>> sels, bool moba_phase = true) {
    try {
      model.force_selections(std::move(sels));
      model.forward(P, batch, moba_phase);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  auto expect_has = [](const std::string& msg, const char* part) {
    EXPECT_NE(msg.find(part), std::string::npos) << msg;
  };
  expect_has(message({good}), "1 layers given, the model has 2");
  expect_has(message({good, good}), "layer 1 runs full attention");
  expect_has(message({good, {}}, false), "layer 0 runs full attention");
  expect_has(message({std::vector<int32_t>(good.begin(), good.end() - 1), {}}),
             "holds 223 entries, (B*T, Hq, K) = (28, 4, 2) needs 224");
  std::vector<int32_t> bad = good;
  bad[0] = 5;  // token 0 lies in block 0
  expect_has(message({bad, {}}), "token 0 (position 0 of sequence 0), head 0: block 5 is neither");
  bad = good;
  bad[0] = -1;
  bad[1] = -1;  // token 0, head 0: no current block
  expect_has(message({bad, {}}), "the current block 0 is not selected");
  bad = good;
  bad[(13 * 4 + 2) * 2] = bad[(13 * 4 + 2) * 2 + 1];  // token 13 (block 4), head 2
  expect_has(message({bad, {}}), "token 13, head 2: block 4 selected twice");
  // A failed forward consumed the forced selections too; the model still runs.
  EXPECT_EQ(message({}), "(no error)");
  EXPECT_EQ(message({good, {}}), "(no error)");
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
