// The property data-parallel training rests on (issue 14): N ranks, each computing the CPU
// model's float64 gradient on its slice of a batch, averaged with GradBuckets over the fake
// group, give one process's gradient on the whole batch. When every slice counts the same
// number of tokens, the mean of the slices' mean losses is the whole batch's mean loss.
//
// Bit for bit against the per-slice gradients summed in rank order and divided by N (any
// N): the threads, buckets and packing change nothing. Not against the trainer's gradient
// accumulation over the same slices (grad_accum = N): its backward adds each slice's
// contributions straight into the one gradient array (the embedding's token by token), so
// its additions are grouped otherwise even where dividing by N is exact.
// Not bit for bit against the single backward on the concatenated batch: there each weight
// gradient is one sum over all B*T rows (a GEMM over the rows, blocked its own way), here N
// sums over B*T/N rows added afterwards; the roundings differ, the bound is a few ulps of
// the tensor's largest element (measured: at most 1.1e-15 of it for N = 2..4; the test
// allows 1e-14).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "dist/fake_communicator.h"
#include "dist/grad_buckets.h"
#include "model/model.h"

namespace moba::dist {
namespace {

using model::Batch;
using model::Model;
using model::ModelConfig;

ModelConfig tiny() {
  ModelConfig c;
  c.vocab_size = 13;
  c.width = 8;
  c.layers = 2;
  c.heads = 2;
  c.kv_heads = 1;
  c.head_dim = 4;
  c.mlp_hidden = 12;
  c.seq_len = 12;
  c.tied_embeddings = false;
  c.init_std = 0.3;
  c.attention.kind = model::AttentionKind::moba;
  c.attention.block_size = 3;
  c.attention.top_k = 2;
  return c;
}

constexpr int64_t kRows = 12;  // divisible by 1, 2, 3 and 4 ranks

Batch whole_batch(const ModelConfig& c) {
  Batch b;
  b.B = kRows;
  b.T = c.seq_len;
  std::mt19937_64 gen(11);
  for (int64_t i = 0; i < b.B * (b.T + 1); ++i)
    b.tokens.push_back(static_cast<int32_t>(gen() % static_cast<uint64_t>(c.vocab_size)));
  return b;
}

// Rank r's rows of the global batch: the contiguous slice [r*B/N, (r+1)*B/N).
Batch slice(const Batch& all, int rank, int N) {
  Batch b;
  b.B = all.B / N;
  b.T = all.T;
  const auto row = static_cast<size_t>(b.T + 1);
  b.tokens.assign(all.tokens.begin() + static_cast<ptrdiff_t>(rank * b.B * row),
                  all.tokens.begin() + static_cast<ptrdiff_t>((rank + 1) * b.B * row));
  return b;
}

std::vector<double> params_of(const Model<double>& m) {
  std::vector<double> P(m.layout().total);
  model::init_params<double>(m.layout(), 5, P);
  return P;
}

// Gradient of the mean loss over `batch`, scaled by loss_scale, added into G.
void add_grad(Model<double>& m, const std::vector<double>& P, const Batch& batch,
              double loss_scale, std::vector<double>& G) {
  m.forward(P, batch, true);
  m.backward(P, G, loss_scale);
}

// The data-parallel gradient: N threads, each its own model on its slice, then reduce().
std::vector<std::vector<double>> data_parallel(const ModelConfig& cfg, const Batch& all, int N) {
  std::vector<std::vector<double>> out(static_cast<size_t>(N));
  FakeGroup group(N);
  group.run([&](Communicator& c) {
    Model<double> m(cfg);
    const std::vector<double> P = params_of(m);
    std::vector<double> G(P.size(), 0.0);
    add_grad(m, P, slice(all, c.rank(), N), 1.0, G);
    std::vector<size_t> sizes;
    std::vector<std::span<double>> spans;
    for (const model::TensorInfo& t : m.layout().tensors) {
      sizes.push_back(t.size);
      spans.emplace_back(G.data() + t.offset, t.size);
    }
    // A small cap: several buckets, the embedding and LM head above it.
    GradBuckets buckets(sizes, sizeof(double), 512);
    EXPECT_GT(buckets.buckets().size(), 3u);
    buckets.reduce(c, spans);
    out[static_cast<size_t>(c.rank())] = std::move(G);
  });
  return out;
}

TEST(DataParallel, EqualsRankOrderMeanOfSliceGradientsBitForBit) {
  const ModelConfig cfg = tiny();
  const Batch all = whole_batch(cfg);
  for (int N = 1; N <= 4; ++N) {
    SCOPED_TRACE(N);
    const auto dp = data_parallel(cfg, all, N);
    Model<double> m(cfg);
    const std::vector<double> P = params_of(m);
    std::vector<double> want;
    for (int r = 0; r < N; ++r) {
      std::vector<double> g(P.size(), 0.0);
      add_grad(m, P, slice(all, r, N), 1.0, g);
      if (r == 0) want = g;
      else
        for (size_t i = 0; i < g.size(); ++i) want[i] += g[i];
    }
    for (double& w : want) w /= N;
    for (int r = 0; r < N; ++r)
      for (size_t i = 0; i < want.size(); ++i)
        ASSERT_EQ(dp[static_cast<size_t>(r)][i], want[i])
            << "rank " << r << ", " << m.layout().tensor_at(i).name << " element " << i;
  }
}

TEST(DataParallel, EqualsTheWholeBatchGradient) {
  const ModelConfig cfg = tiny();
  const Batch all = whole_batch(cfg);
  Model<double> m(cfg);
  const std::vector<double> P = params_of(m);
  std::vector<double> whole(P.size(), 0.0);
  add_grad(m, P, all, 1.0, whole);
  for (int N = 1; N <= 4; ++N) {
    SCOPED_TRACE(N);
    const auto dp = data_parallel(cfg, all, N);
    // Every rank holds the same gradient (the optimizer step is then the same everywhere).
    for (int r = 1; r < N; ++r) ASSERT_EQ(dp[static_cast<size_t>(r)], dp[0]) << "rank " << r;
    double worst = 0.0;
    for (const model::TensorInfo& t : m.layout().tensors) {
      double scale = 0.0;
      for (size_t i = t.offset; i < t.offset + t.size; ++i)
        scale = std::max(scale, std::abs(whole[i]));
      ASSERT_GT(scale, 0.0) << t.name;  // a tensor without gradient would prove nothing
      for (size_t i = t.offset; i < t.offset + t.size; ++i) {
        const double err = std::abs(dp[0][i] - whole[i]) / scale;
        worst = std::max(worst, err);
        ASSERT_LE(err, 1e-14) << t.name << " element " << i - t.offset << ": " << dp[0][i]
                              << " vs " << whole[i];
      }
    }
    std::printf("N = %d: largest difference %.3g of the tensor's largest element\n", N, worst);
    if (N == 1) {
      EXPECT_EQ(dp[0], whole);  // one rank is the whole batch: nothing differs
    }
  }
}

}  // namespace
}  // namespace moba::dist
