// Each layer's backward against float64 central differences of loss = sum(y * W), W random.
#include <gtest/gtest.h>

#include <vector>

#include "attention/stats.h"
#include "core/random.h"
#include "model/attention_layer.h"
#include "model/cross_entropy.h"
#include "model/gradcheck.h"
#include "model/linear.h"
#include "model/rmsnorm.h"
#include "model/rope.h"
#include "model/swiglu.h"

namespace moba::model {
namespace {

using testing::expect_close;
using testing::numeric_grad;
using testing::weighted_sum;
using Vec = std::vector<double>;

TEST(Layers, Linear) {
  const int64_t M = 5, K = 7, N = 3;
  Vec x = random_normal<double>(M * K, 1), W = random_normal<double>(N * K, 2);
  const Vec w = random_normal<double>(M * N, 3);
  auto loss = [&] {
    Vec y(M * N);
    linear_forward(M, K, N, x.data(), W.data(), y.data());
    return weighted_sum(y, w);
  };
  Vec dx(M * K), dW(N * K, 0.0);
  linear_backward(M, K, N, x.data(), W.data(), w.data(), dx.data(), dW.data());
  expect_close("dx", dx, numeric_grad(loss, x));
  expect_close("dW", dW, numeric_grad(loss, W));
}

TEST(Layers, RmsNorm) {
  const int64_t M = 4, C = 9;
  Vec x = random_normal<double>(M * C, 4), g = random_normal<double>(C, 5);
  const Vec w = random_normal<double>(M * C, 6);
  auto loss = [&] {
    Vec y(M * C), r(M);
    rmsnorm_forward(M, C, 1e-5, x.data(), g.data(), y.data(), r.data());
    return weighted_sum(y, w);
  };
  Vec y(M * C), r(M), dx(M * C, 0.5), dg(C, 0.0);
  rmsnorm_forward(M, C, 1e-5, x.data(), g.data(), y.data(), r.data());
  rmsnorm_backward(M, C, x.data(), g.data(), r.data(), w.data(), dx.data(), dg.data(), true);
  for (double& e : dx) e -= 0.5;  // accumulate_dx added to what was there
  expect_close("dx", dx, numeric_grad(loss, x));
  expect_close("dw", dg, numeric_grad(loss, g));
}

TEST(Layers, Rope) {
  const int64_t M = 6, H = 3, D = 8;
  const RopeTable rt(20, D, 10000.0);
  const std::vector<int32_t> pos = {0, 1, 5, 19, 2, 7};
  Vec x = random_normal<double>(M * H * D, 7);
  const Vec w = random_normal<double>(M * H * D, 8);
  auto loss = [&] {
    Vec y = x;
    rope_apply(rt, M, H, pos.data(), y.data(), false);
    return weighted_sum(y, w);
  };
  Vec dx = w;
  rope_apply(rt, M, H, pos.data(), dx.data(), true);
  expect_close("dx", dx, numeric_grad(loss, x));
  // Position 0 is the identity.
  Vec y = x;
  rope_apply(rt, M, H, pos.data(), y.data(), false);
  for (int64_t i = 0; i < H * D; ++i) EXPECT_DOUBLE_EQ(y[i], x[i]);
}

TEST(Layers, SwiGlu) {
  const int64_t n = 17;
  Vec a = random_normal<double>(n, 9, 2.0), b = random_normal<double>(n, 10);
  const Vec w = random_normal<double>(n, 11);
  auto loss = [&] {
    Vec h(n);
    swiglu_forward(n, a.data(), b.data(), h.data());
    return weighted_sum(h, w);
  };
  Vec da(n), db(n);
  swiglu_backward(n, a.data(), b.data(), w.data(), da.data(), db.data());
  expect_close("da", da, numeric_grad(loss, a));
  expect_close("db", db, numeric_grad(loss, b));
}

TEST(Layers, CrossEntropy) {
  const int64_t M = 4, V = 7;
  Vec z = random_normal<double>(M * V, 12, 3.0);
  const std::vector<int32_t> tgt = {0, 6, 3, 3};
  auto loss = [&] {
    Vec p = z, l(M);
    cross_entropy_forward(M, V, p.data(), tgt.data(), l.data());
    double s = 0.0;
    for (double e : l) s += e;
    return s / M;
  };
  Vec p = z, l(M);
  cross_entropy_forward(M, V, p.data(), tgt.data(), l.data());
  cross_entropy_backward(M, V, p.data(), tgt.data(), 1.0 / M);
  expect_close("dlogits", p, numeric_grad(loss, z));
}

// The attention sub-layer (projections, RoPE, dense or MoBA attention with GQA, output
// projection) on two packed documents, the second not a multiple of the block size.
void check_attention(bool moba) {
  const int64_t C = 6, Hq = 4, Hkv = 2, D = 4;
  const attn::Layout layout = attn::Layout::varlen({0, 13, 24}, Hq, Hkv, D);
  const int64_t M = layout.tokens();
  const attn::MobaConfig mc{3, 2};
  const RopeTable rt(16, D, 10000.0);
  std::vector<int32_t> pos(M);
  for (int64_t m = 0; m < M; ++m) pos[m] = static_cast<int32_t>(m < 13 ? m : m - 13);
  const AttentionWeights aw{0, size_t(Hq * D * C), size_t((Hq + Hkv) * D * C),
                            size_t((Hq + 2 * Hkv) * D * C)};
  Vec P = random_normal<double>((2 * Hq + 2 * Hkv) * D * C, 13, 0.5);
  Vec x = random_normal<double>(M * C, 14);
  const Vec w = random_normal<double>(M * C, 15);
  auto loss = [&] {
    Vec y(M * C);
    AttentionCache<double> cache;
    attention_forward(layout, moba ? &mc : nullptr, rt, pos.data(), C, P.data(), aw, x.data(),
                      y.data(), cache);
    return weighted_sum(y, w);
  };
  Vec y(M * C), dx(M * C), dP(P.size(), 0.0);
  AttentionCache<double> cache;
  attention_forward(layout, moba ? &mc : nullptr, rt, pos.data(), C, P.data(), aw, x.data(),
                    y.data(), cache);
  if (moba) {  // the test must exercise a real choice: some query skips a past block
    EXPECT_LT(cache.pairs, attn::dense_pairs(layout));
  }
  attention_backward(layout, moba ? &mc : nullptr, rt, pos.data(), C, P.data(), aw, x.data(), cache,
                     w.data(), dx.data(), dP.data());
  expect_close("dx", dx, numeric_grad(loss, x));
  expect_close("dW (q, k, v, o)", dP, numeric_grad(loss, P));
}

TEST(Layers, AttentionDense) { check_attention(false); }
TEST(Layers, AttentionMoba) { check_attention(true); }

}  // namespace
}  // namespace moba::model
