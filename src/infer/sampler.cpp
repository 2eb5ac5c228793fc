#include "infer/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "core/random.h"

namespace moba::infer {
namespace {

void check_finite(std::span<const float> logits, int64_t sequence, int64_t step) {
  for (size_t i = 0; i < logits.size(); ++i)
    MOBA_CHECK(std::isfinite(logits[i]), "sequence ", sequence, ", step ", step, ": the logit of token ",
               i, " is ", std::isnan(logits[i]) ? "NaN" : "infinite",
               " (the model's output is not finite; nothing can be sampled)");
}

}  // namespace

void SamplerOptions::validate() const {
  MOBA_CHECK(std::isfinite(temperature) && temperature >= 0.0,
             "--temperature must be >= 0 (0 = greedy), got ", temperature);
  MOBA_CHECK(top_k >= 0, "--top-k must be >= 0 (0 = no limit), got ", top_k);
  MOBA_CHECK(std::isfinite(top_p) && top_p > 0.0 && top_p <= 1.0,
             "--top-p must be in (0, 1] (1 = no limit), got ", top_p);
}

uint64_t counter_bits(uint64_t seed, uint64_t stream, uint64_t counter) {
  return splitmix64(splitmix64(splitmix64(seed) ^ stream) ^ counter);
}

double counter_uniform(uint64_t seed, uint64_t stream, uint64_t counter) {
  return static_cast<double>(counter_bits(seed, stream, counter) >> 11) * 0x1.0p-53;
}

int32_t argmax(std::span<const float> logits) {
  MOBA_CHECK(!logits.empty(), "argmax of no logits");
  size_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i)
    if (logits[i] > logits[best]) best = i;  // strict: ties keep the lower id
  return static_cast<int32_t>(best);
}

Sampler::Sampler(const SamplerOptions& options) : opt_(options) { opt_.validate(); }

void Sampler::kept(std::span<const float> logits, std::vector<int32_t>& ids,
                   std::vector<double>& probs) const {
  const size_t V = logits.size();
  ids.resize(V);
  std::iota(ids.begin(), ids.end(), 0);
  const auto before = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  size_t n = V;
  if (opt_.top_k > 0 && static_cast<size_t>(opt_.top_k) < V) {
    n = static_cast<size_t>(opt_.top_k);
    std::partial_sort(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(n), ids.end(), before);
  } else {
    std::sort(ids.begin(), ids.end(), before);
  }
  ids.resize(n);
  // Tempered softmax over the kept ids, in double, from the largest logit down.
  const double top = logits[ids[0]];
  probs.resize(n);
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) sum += probs[i] = std::exp((logits[ids[i]] - top) / opt_.temperature);
  for (double& p : probs) p /= sum;
  if (opt_.top_p < 1.0) {  // the smallest prefix reaching top_p, then renormalised
    double cum = 0.0;
    size_t m = 0;
    while (m < n && cum < opt_.top_p) cum += probs[m++];
    ids.resize(m);
    probs.resize(m);
    for (double& p : probs) p /= cum;
  }
}

int32_t Sampler::sample(std::span<const float> logits, int64_t sequence, int64_t step) const {
  MOBA_CHECK(!logits.empty(), "sampling from an empty row of logits");
  check_finite(logits, sequence, step);
  if (greedy()) return argmax(logits);
  std::vector<int32_t> ids;
  std::vector<double> probs;
  kept(logits, ids, probs);
  const double u = counter_uniform(opt_.seed, static_cast<uint64_t>(sequence),
                                   static_cast<uint64_t>(step));
  double cum = 0.0;
  for (size_t i = 0; i < ids.size(); ++i) {
    cum += probs[i];
    if (u < cum) return ids[i];
  }
  return ids.back();  // u within rounding of 1
}

std::vector<int32_t> Sampler::sample_batch(std::span<const float> logits, int64_t vocab,
                                           int64_t step, std::span<const int64_t> sequences) const {
  MOBA_CHECK(vocab >= 1 && logits.size() % static_cast<size_t>(vocab) == 0, "logits of ",
             logits.size(), " values are not rows of V = ", vocab);
  const size_t B = logits.size() / static_cast<size_t>(vocab);
  MOBA_CHECK(sequences.empty() || sequences.size() == B, sequences.size(),
             " sequence indices for ", B, " rows of logits");
  std::vector<int32_t> out(B);
  for (size_t b = 0; b < B; ++b)
    out[b] = sample(logits.subspan(b * static_cast<size_t>(vocab), static_cast<size_t>(vocab)),
                    sequences.empty() ? static_cast<int64_t>(b) : sequences[b], step);
  return out;
}

std::vector<double> Sampler::distribution(std::span<const float> logits) const {
  MOBA_CHECK(!logits.empty(), "sampling from an empty row of logits");
  check_finite(logits, 0, 0);
  std::vector<double> p(logits.size(), 0.0);
  if (greedy()) {
    p[static_cast<size_t>(argmax(logits))] = 1.0;
    return p;
  }
  std::vector<int32_t> ids;
  std::vector<double> probs;
  kept(logits, ids, probs);
  for (size_t i = 0; i < ids.size(); ++i) p[static_cast<size_t>(ids[i])] = probs[i];
  return p;
}

}  // namespace moba::infer
