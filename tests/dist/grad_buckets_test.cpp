// Gradient buckets: the layout (reverse order, byte cap, an oversized tensor alone) and the
// reduction (the rank-order mean, bit for bit, with several buckets and ranks).
#include "dist/grad_buckets.h"

#include <gtest/gtest.h>

#include <vector>

#include "core/error.h"
#include "dist/fake_communicator.h"

namespace moba::dist {
namespace {

std::vector<std::vector<size_t>> layout(const GradBuckets& g) {
  std::vector<std::vector<size_t>> out;
  for (const Bucket& b : g.buckets()) out.push_back(b.params);
  return out;
}

TEST(GradBuckets, ReverseOrderUnderTheCap) {
  // 4-byte elements, cap 40 bytes = 10 elements.
  const GradBuckets g({3, 4, 5, 2, 6}, 4, 40);
  // Reverse: 6 (24 B) + 2 (8 B) = 32; + 5 would be 52 > 40: close. 5 + 4 = 9 (36 B); + 3 = 48:
  // close. 3 alone.
  EXPECT_EQ(layout(g), (std::vector<std::vector<size_t>>{{4, 3}, {2, 1}, {0}}));
  EXPECT_EQ(g.buckets()[0].elements, 8u);
  EXPECT_EQ(g.buckets()[0].bytes, 32u);
  EXPECT_EQ(g.buckets()[1].bytes, 36u);
  EXPECT_EQ(g.buckets()[2].bytes, 12u);
  for (const Bucket& b : g.buckets()) EXPECT_LE(b.bytes, 40u);
}

TEST(GradBuckets, ExactlyTheCapFits) {
  const GradBuckets g({5, 5, 5}, 8, 80);  // two 40-byte tensors fill 80 bytes exactly
  EXPECT_EQ(layout(g), (std::vector<std::vector<size_t>>{{2, 1}, {0}}));
}

TEST(GradBuckets, TensorAboveTheCapSitsAlone) {
  const GradBuckets g({1, 2, 100, 1, 1}, 8, 32);
  EXPECT_EQ(layout(g), (std::vector<std::vector<size_t>>{{4, 3}, {2}, {1, 0}}));
  EXPECT_EQ(g.buckets()[1].bytes, 800u);
  // And at the very start or end of the list.
  EXPECT_EQ(layout(GradBuckets({100, 1}, 8, 32)), (std::vector<std::vector<size_t>>{{1}, {0}}));
  EXPECT_EQ(layout(GradBuckets({1, 100}, 8, 32)), (std::vector<std::vector<size_t>>{{1}, {0}}));
}

TEST(GradBuckets, DoubleSizedElementsMakeMoreBuckets) {
  EXPECT_EQ(GradBuckets({4, 4, 4, 4}, 4, 32).buckets().size(), 2u);
  EXPECT_EQ(GradBuckets({4, 4, 4, 4}, 8, 32).buckets().size(), 4u);
}

TEST(GradBuckets, BadArguments) {
  EXPECT_THROW(GradBuckets({1}, 2, 32), Error);
  EXPECT_THROW(GradBuckets({1}, 4, 0), Error);
  GradBuckets g({2, 3}, 8, 16);
  FakeGroup group(1);
  std::vector<double> a(2), b(4);
  std::vector<std::span<double>> wrong_size{a, b};
  EXPECT_THROW(g.reduce(group.comm(0), wrong_size), Error);
  std::vector<std::span<double>> too_few{a};
  EXPECT_THROW(g.reduce(group.comm(0), too_few), Error);
  std::vector<float> fa(2), fb(3);
  std::vector<std::span<float>> wrong_type{fa, fb};
  EXPECT_THROW(g.reduce(group.comm(0), wrong_type), Error);
}

// Each rank's gradient tensors: distinct per rank, tensor and element.
std::vector<std::vector<double>> rank_grads(int rank, const std::vector<size_t>& sizes) {
  std::vector<std::vector<double>> g;
  for (size_t p = 0; p < sizes.size(); ++p) {
    g.emplace_back(sizes[p]);
    for (size_t i = 0; i < sizes[p]; ++i)
      g[p][i] = (rank % 2 ? 1e9 : 0.3) * (1.0 + static_cast<double>(p)) +
                static_cast<double>(i) / (7.0 + rank);
  }
  return g;
}

TEST(GradBuckets, ReduceIsTheRankOrderMean) {
  const std::vector<size_t> sizes{3, 17, 1, 40, 6, 9};
  for (int N = 1; N <= 4; ++N) {
    SCOPED_TRACE(N);
    std::vector<std::vector<std::vector<double>>> out(static_cast<size_t>(N));
    FakeGroup group(N);
    group.run([&](Communicator& c) {
      GradBuckets buckets(sizes, sizeof(double), 16 * sizeof(double));
      ASSERT_GE(buckets.buckets().size(), 4u);  // several buckets, one oversized tensor
      std::vector<std::vector<double>> g = rank_grads(c.rank(), sizes);
      std::vector<std::span<double>> spans(g.begin(), g.end());
      buckets.reduce(c, spans);
      out[static_cast<size_t>(c.rank())] = g;
    });
    for (size_t p = 0; p < sizes.size(); ++p)
      for (size_t i = 0; i < sizes[p]; ++i) {
        double sum = rank_grads(0, sizes)[p][i];
        for (int r = 1; r < N; ++r) sum += rank_grads(r, sizes)[p][i];
        const double want = sum / N;
        for (int r = 0; r < N; ++r)
          ASSERT_EQ(out[static_cast<size_t>(r)][p][i], want)
              << "rank " << r << " tensor " << p << " element " << i;
      }
  }
}

TEST(GradBuckets, ReduceFloat) {
  const std::vector<size_t> sizes{5, 2, 8};
  std::vector<std::vector<float>> out(3);
  FakeGroup group(3);
  group.run([&](Communicator& c) {
    GradBuckets buckets(sizes, sizeof(float), 8 * sizeof(float));
    std::vector<float> flat(15);
    for (size_t i = 0; i < flat.size(); ++i) flat[i] = static_cast<float>(c.rank() * 100 + i);
    std::vector<std::span<float>> spans{std::span<float>(flat).subspan(0, 5),
                                        std::span<float>(flat).subspan(5, 2),
                                        std::span<float>(flat).subspan(7, 8)};
    buckets.reduce(c, spans);
    out[static_cast<size_t>(c.rank())] = flat;
  });
  for (int r = 0; r < 3; ++r)
    for (size_t i = 0; i < 15; ++i)
      EXPECT_EQ(out[static_cast<size_t>(r)][i], static_cast<float>(100 + i)) << i;  // (0+100+200)/3
}

}  // namespace
}  // namespace moba::dist
