// The synthetic associative-recall source: structure, determinism, recall mask.
#include "train/synthetic.h"

#include <gtest/gtest.h>

#include <map>

namespace moba::train {
namespace {

TEST(AssocRecall, WindowsHoldTheirAnswers) {
  const int64_t V = 32, T = 63;
  AssocRecallSource src(V, T, 3, 4, 7);
  const int64_t n = src.keys();
  EXPECT_EQ(n, 4);
  const std::vector<uint8_t> mask = src.recall_mask();
  for (uint64_t stream : {0ULL, 1ULL, 12345ULL}) {
    const std::vector<int32_t> w = src.window(stream);
    ASSERT_EQ(w.size(), static_cast<size_t>(T + 1));
    std::map<int32_t, int32_t> value_of;  // key -> value, from the pair tokens
    for (int64_t p = 0; p < (T + 1) / 2; ++p) {
      ASSERT_GE(w[p], 2 * n);
      if (w[p] < 2 * n + n * n) value_of[(w[p] - 2 * n) / n] = n + (w[p] - 2 * n) % n;
    }
    ASSERT_EQ(value_of.size(), static_cast<size_t>(n));
    int answers = 0;
    for (int64_t t = 0; t < T; ++t) {
      if (!mask[t]) continue;
      ++answers;
      ASSERT_LT(w[t], n) << "position " << t << " precedes an answer: it must be a key";
      EXPECT_EQ(w[t + 1], value_of[w[t]]) << "position " << t + 1;
    }
    EXPECT_EQ(answers, 16);
  }
  EXPECT_EQ(src.window(5), src.window(5));
  EXPECT_NE(src.window(5), src.window(6));
  const model::Batch b = src.train_batch(2);
  EXPECT_EQ(b.B, 3);
  EXPECT_EQ(std::vector<int32_t>(b.tokens.begin(), b.tokens.begin() + T + 1), src.window(6));
}

}  // namespace
}  // namespace moba::train
