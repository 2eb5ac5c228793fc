// The sampler: greedy and its equivalents, determinism across batch positions, restriction
// by top-k and top-p, and empirical frequencies against the tempered softmax.
#include "infer/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/random.h"

namespace moba::infer {
namespace {

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// The tempered softmax, restricted and renormalised, computed directly in double.
std::vector<double> reference(const std::vector<float>& l, double T, int64_t k, double p) {
  const size_t V = l.size();
  std::vector<size_t> order(V);
  for (size_t i = 0; i < V; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return l[a] > l[b]; });
  const size_t n = k > 0 ? std::min(V, static_cast<size_t>(k)) : V;
  double z = 0;
  for (size_t i = 0; i < n; ++i) z += std::exp(l[order[i]] / T);
  std::vector<double> q(V, 0.0);
  double cum = 0;
  for (size_t i = 0; i < n && cum < p; ++i) {
    q[order[i]] = std::exp(l[order[i]] / T) / z;
    cum += q[order[i]];
  }
  for (double& x : q) x /= cum;
  return q;
}

TEST(CounterRandom, IsAPureFunctionSpreadOverTheUnitInterval) {
  EXPECT_EQ(counter_bits(7, 3, 11), counter_bits(7, 3, 11));
  EXPECT_NE(counter_bits(7, 3, 11), counter_bits(7, 3, 12));
  EXPECT_NE(counter_bits(7, 3, 11), counter_bits(7, 4, 11));
  EXPECT_NE(counter_bits(7, 3, 11), counter_bits(8, 3, 11));
  EXPECT_NE(counter_bits(0, 1, 0), counter_bits(0, 0, 1));  // the words are not symmetric
  // 10 equal bins over 100000 consecutive counters: each within 5 sigma of 10000.
  std::vector<int> bins(10, 0);
  for (uint64_t c = 0; c < 100000; ++c) {
    const double u = counter_uniform(42, 5, c);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    ++bins[static_cast<size_t>(u * 10)];
  }
  for (int b : bins) EXPECT_NEAR(b, 10000, 5 * std::sqrt(9000.0));
}

TEST(Sampler, GreedyIsArgmaxWithTiesToTheLowestId) {
  const std::vector<float> l = {0.5f, 2.0f, -1.0f, 2.0f, 1.9f};
  EXPECT_EQ(argmax(l), 1);
  const Sampler greedy({.temperature = 0.0, .seed = 9});
  for (int64_t step = 0; step < 20; ++step) EXPECT_EQ(greedy.sample(l, 0, step), 1);
  // top-k = 1 and a tiny top-p are greedy at any temperature.
  const Sampler k1({.temperature = 1.7, .top_k = 1, .seed = 3});
  const Sampler p0({.temperature = 1.7, .top_p = 1e-9, .seed = 3});
  std::mt19937_64 g(1234);
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<float> x = random_normal<float>(37, g(), 2.0);
    const bool tie = trial % 5 == 0;
    if (tie) x[12] = x[30] = *std::max_element(x.begin(), x.end()) + 1;
    const int32_t a = argmax(x);
    if (tie) {
      EXPECT_EQ(a, 12);
    }
    for (int64_t step = 0; step < 5; ++step) {
      EXPECT_EQ(k1.sample(x, trial, step), a);
      EXPECT_EQ(p0.sample(x, trial, step), a);
    }
  }
}

TEST(Sampler, SameSeedSameTokensInAnyBatchPosition) {
  const int64_t V = 50, B = 4;
  const std::vector<float> logits = random_normal<float>(static_cast<size_t>(B * V), 77, 1.5);
  const Sampler s({.temperature = 0.9, .top_k = 20, .top_p = 0.95, .seed = 2024});
  std::vector<std::vector<int32_t>> first;
  for (int64_t step = 0; step < 30; ++step) first.push_back(s.sample_batch(logits, V, step));
  // Again: the same tokens.
  for (int64_t step = 0; step < 30; ++step) EXPECT_EQ(s.sample_batch(logits, V, step), first[step]);
  // Rows in reverse order with their sequence indices: each sequence gets its tokens.
  std::vector<float> reversed;
  for (int64_t b = B - 1; b >= 0; --b)
    reversed.insert(reversed.end(), logits.begin() + b * V, logits.begin() + (b + 1) * V);
  const std::vector<int64_t> seqs = {3, 2, 1, 0};
  for (int64_t step = 0; step < 30; ++step) {
    const std::vector<int32_t> r = s.sample_batch(reversed, V, step, seqs);
    for (int64_t b = 0; b < B; ++b) EXPECT_EQ(r[b], first[step][B - 1 - b]);
  }
  // A batch of one: the same token as in the batch of four.
  for (int64_t step = 0; step < 30; ++step)
    EXPECT_EQ(s.sample(std::span<const float>(logits).subspan(2 * V, V), 2, step), first[step][2]);
  // Another seed gives other tokens somewhere.
  const Sampler t({.temperature = 0.9, .top_k = 20, .top_p = 0.95, .seed = 2025});
  int differ = 0;
  for (int64_t step = 0; step < 30; ++step) differ += t.sample_batch(logits, V, step) != first[step];
  EXPECT_GT(differ, 0);
}

// Frequencies of 40000 draws against the expected probabilities: Pearson's chi-square
// statistic below the 1e-4 upper quantile of its distribution (dof = kept tokens - 1).
void expect_frequencies(const std::vector<float>& l, const SamplerOptions& o) {
  const Sampler s(o);
  const std::vector<double> want = reference(l, o.temperature, o.top_k, o.top_p);
  const std::vector<double> got = s.distribution(l);
  for (size_t i = 0; i < l.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-12) << "token " << i;
  const int n = 40000;
  std::vector<int> count(l.size(), 0);
  for (int i = 0; i < n; ++i) ++count[static_cast<size_t>(s.sample(l, 5, i))];
  double chi2 = 0;
  int kept = 0;
  for (size_t i = 0; i < l.size(); ++i) {
    if (want[i] == 0) {
      EXPECT_EQ(count[i], 0) << "token " << i << " lies outside top-k/top-p but was drawn";
      continue;
    }
    ++kept;
    const double e = n * want[i];
    chi2 += (count[i] - e) * (count[i] - e) / e;
  }
  // 1e-4 upper quantiles of chi-square for 1..7 degrees of freedom.
  const double q[] = {0, 15.14, 18.42, 21.11, 23.51, 25.74, 27.86, 29.88};
  ASSERT_GE(kept, 2);
  ASSERT_LE(kept, 8);
  EXPECT_LT(chi2, q[kept - 1]) << "kept " << kept << " tokens";
}

TEST(Sampler, FrequenciesMatchTheTemperedSoftmax) {
  const std::vector<float> l = {1.0f, 0.2f, -0.5f, 2.0f, 0.9f, -1.5f, 0.0f, 1.4f};
  expect_frequencies(l, {.temperature = 1.0, .seed = 1});
  expect_frequencies(l, {.temperature = 0.6, .seed = 2});
  expect_frequencies(l, {.temperature = 2.5, .seed = 3});
  expect_frequencies(l, {.temperature = 1.0, .top_k = 3, .seed = 4});
  expect_frequencies(l, {.temperature = 0.8, .top_p = 0.7, .seed = 5});
  expect_frequencies(l, {.temperature = 1.3, .top_k = 5, .top_p = 0.8, .seed = 6});
}

TEST(Sampler, TheChiSquareCheckCanFail) {
  // Draws from T = 1 tested against T = 0.6's probabilities: far outside the bound.
  const std::vector<float> l = {1.0f, 0.2f, -0.5f, 2.0f};
  const Sampler s({.temperature = 1.0, .seed = 1});
  const std::vector<double> wrong = reference(l, 0.6, 0, 1.0);
  std::vector<int> count(4, 0);
  for (int i = 0; i < 40000; ++i) ++count[static_cast<size_t>(s.sample(l, 0, i))];
  double chi2 = 0;
  for (size_t i = 0; i < 4; ++i) chi2 += std::pow(count[i] - 40000 * wrong[i], 2) / (40000 * wrong[i]);
  EXPECT_GT(chi2, 21.11);
}

TEST(Sampler, RestrictionsAreRespected) {
  const std::vector<float> l = random_normal<float>(100, 5, 3.0);
  std::vector<size_t> order(100);
  for (size_t i = 0; i < 100; ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return l[a] > l[b]; });
  const Sampler k5({.temperature = 3.0, .top_k = 5, .seed = 8});
  const std::vector<size_t> top5(order.begin(), order.begin() + 5);
  for (int i = 0; i < 2000; ++i) {
    const int32_t t = k5.sample(l, 0, i);
    EXPECT_NE(std::find(top5.begin(), top5.end(), static_cast<size_t>(t)), top5.end()) << t;
  }
  // top-p: every drawn token is in the smallest prefix of the sorted tempered distribution
  // whose mass reaches p.
  const Sampler p({.temperature = 2.0, .top_p = 0.5, .seed = 8});
  const std::vector<double> q = reference(l, 2.0, 0, 1.0);
  double cum = 0;
  size_t m = 0;
  while (cum < 0.5) cum += q[order[m++]];
  for (int i = 0; i < 2000; ++i) {
    const int32_t t = p.sample(l, 0, i);
    EXPECT_NE(std::find(order.begin(), order.begin() + m, static_cast<size_t>(t)),
              order.begin() + m);
  }
}

TEST(Sampler, BadInputIsNamed) {
  EXPECT_NE(message_of([] { Sampler({.temperature = -1}); }).find("--temperature must be >= 0"),
            std::string::npos);
  EXPECT_NE(message_of([] { Sampler({.top_k = -2}); }).find("--top-k must be >= 0"),
            std::string::npos);
  EXPECT_NE(message_of([] { Sampler({.top_p = 0}); }).find("--top-p must be in (0, 1]"),
            std::string::npos);
  EXPECT_NE(message_of([] { Sampler({.top_p = 1.5}); }).find("--top-p"), std::string::npos);
  std::vector<float> l = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f};
  l[4] = std::numeric_limits<float>::quiet_NaN();
  for (double T : {0.0, 1.0}) {
    const Sampler s({.temperature = T});
    // Row 1 of a batch of 2 is sequence 1: named with the step.
    std::vector<float> batch(6, 0.0f);
    batch.insert(batch.end(), l.begin(), l.end());
    const std::string m = message_of([&] { s.sample_batch(batch, 6, 17); });
    EXPECT_NE(m.find("sequence 1, step 17: the logit of token 4 is NaN"), std::string::npos) << m;
  }
  l[4] = std::numeric_limits<float>::infinity();
  EXPECT_NE(message_of([&] { Sampler({}).sample(l, 3, 2); }).find("sequence 3, step 2: the logit of token 4 is infinite"),
            std::string::npos);
  EXPECT_NE(message_of([&] { Sampler({}).sample_batch(l, 4, 0); }).find("not rows of V = 4"),
            std::string::npos);
}

}  // namespace
}  // namespace moba::infer
