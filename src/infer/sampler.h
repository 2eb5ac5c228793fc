// Sampling the next token from logits (B, V): greedy (temperature 0), or from the tempered
// softmax restricted by top-k and top-p (nucleus). The randomness is counter-based: the
// uniform draw of a token is a pure function of (seed, sequence, step), so the same seed
// gives the same tokens on any machine, in any batch position and batch size, and a
// sequence's tokens do not depend on the other sequences decoded beside it.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace moba::infer {

struct SamplerOptions {
  double temperature = 1.0;  // 0: greedy (argmax, ties to the lowest id); else > 0
  int64_t top_k = 0;         // keep the k most likely tokens; 0: all
  double top_p = 1.0;        // keep the smallest set of most likely tokens whose tempered
                             // probability (after top-k) reaches top_p; 1: all
  uint64_t seed = 0;

  // Throws moba::Error naming the option (temperature < 0 or not finite, top_k < 0, top_p
  // outside (0, 1]).
  void validate() const;
};

// 64 random bits and a uniform double in [0, 1) from (seed, stream, counter): SplitMix64
// finalisers chained over the three words. Pure functions, identical on every platform.
uint64_t counter_bits(uint64_t seed, uint64_t stream, uint64_t counter);
double counter_uniform(uint64_t seed, uint64_t stream, uint64_t counter);

// The id of the largest logit, the lowest id among equal ones.
int32_t argmax(std::span<const float> logits);

class Sampler {
 public:
  explicit Sampler(const SamplerOptions& options);  // validates
  const SamplerOptions& options() const { return opt_; }
  bool greedy() const { return opt_.temperature == 0.0 || opt_.top_k == 1; }

  // One token from one row of V logits, for sequence `sequence` at decode step `step`.
  // Non-finite logits are a moba::Error naming the sequence, the step and the token id.
  int32_t sample(std::span<const float> logits, int64_t sequence, int64_t step) const;

  // B tokens from logits (B, V), row b belonging to sequence sequences[b] (empty: b).
  std::vector<int32_t> sample_batch(std::span<const float> logits, int64_t vocab, int64_t step,
                                    std::span<const int64_t> sequences = {}) const;

  // The distribution sample() draws from (V probabilities, zero outside the kept set),
  // in double: what the tests compare empirical frequencies with. Greedy: one-hot.
  std::vector<double> distribution(std::span<const float> logits) const;

 private:
  // Kept ids in descending probability (ties: lower id first) and their probabilities,
  // normalised over the kept set.
  void kept(std::span<const float> logits, std::vector<int32_t>& ids,
            std::vector<double>& probs) const;

  SamplerOptions opt_;
};

}  // namespace moba::infer
