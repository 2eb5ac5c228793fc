// AdamW against a hand computation, weight decay only on matrices, clipping, schedule.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "model/params.h"
#include "train/adamw.h"
#include "train/schedule.h"

namespace moba::train {
namespace {

TEST(AdamW, MatchesTheFormulaAndDecaysOnlyMatrices) {
  model::ModelConfig mc;
  mc.vocab_size = 5;
  mc.width = 4;
  mc.layers = 1;
  mc.heads = 2;
  mc.mlp_hidden = 6;
  const model::ParamLayout layout = model::make_param_layout(mc);
  OptimConfig oc;
  oc.weight_decay = 0.5;
  AdamW adam(layout, oc);
  std::vector<float> p(layout.total, 1.0f), g(layout.total, 0.0f);
  const size_t wq = layout.find("layers.0.attn.wq")->offset;
  const size_t norm = layout.find("layers.0.attn_norm")->offset;
  const size_t emb = layout.find("embed")->offset;
  g[wq] = 0.2f;
  g[norm] = 0.2f;
  const double lr = 0.01;
  adam.step(p, g, lr);
  adam.step(p, g, lr);
  // Two steps of Adam with a constant gradient: m_hat = g, v_hat = g^2, update = lr each.
  double expect = 1.0;
  for (int i = 0; i < 2; ++i) expect = expect - lr * 0.5 * expect - lr * (0.2 / (0.2 + 1e-8));
  EXPECT_NEAR(p[wq], expect, 1e-6);
  EXPECT_NEAR(p[norm], 1.0 - 2 * lr * (0.2 / (0.2 + 1e-8)), 1e-6);
  EXPECT_EQ(p[emb], 1.0f);                                       // no gradient, no decay
  EXPECT_LT(p[layout.find("layers.0.mlp.w_up")->offset], 1.0f);  // decay only
  EXPECT_FALSE(layout.find("embed")->decay);
  EXPECT_FALSE(layout.find("final_norm")->decay);
  EXPECT_TRUE(layout.find("layers.0.mlp.w_down")->decay);
}

TEST(AdamW, ClipScalesToTheMaxNorm) {
  std::vector<float> g = {3.0f, 4.0f};
  const double n = grad_norm(g);
  EXPECT_DOUBLE_EQ(n, 5.0);
  clip_grads(g, n, 1.0);
  EXPECT_NEAR(grad_norm(g), 1.0, 1e-6);
  clip_grads(g, grad_norm(g), 0.0);  // 0 = no clipping
  EXPECT_NEAR(grad_norm(g), 1.0, 1e-6);
}

TEST(Schedule, WarmupThenCosine) {
  OptimConfig t;
  t.lr = 1.0;
  t.min_lr_ratio = 0.1;
  t.warmup_steps = 10;
  t.steps = 110;
  EXPECT_DOUBLE_EQ(learning_rate(t, 0), 0.1);
  EXPECT_DOUBLE_EQ(learning_rate(t, 9), 1.0);
  EXPECT_DOUBLE_EQ(learning_rate(t, 10), 1.0);
  EXPECT_NEAR(learning_rate(t, 109), 0.1, 1e-12);
  EXPECT_NEAR(learning_rate(t, 10 + 99 / 2.0), 0.55, 0.01);
  for (int64_t s = 11; s < 110; ++s) EXPECT_LT(learning_rate(t, s), learning_rate(t, s - 1));
}

}  // namespace
}  // namespace moba::train
