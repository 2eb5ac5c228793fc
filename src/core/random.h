// Deterministic random inputs for tests, benchmarks and tools: never zeros. Also the one
// integer mixer that seeds, streams and counters go through.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace moba {

// SplitMix64's finaliser (Steele, Lea and Flood 2014): a bijection of 64-bit words that
// spreads every input bit over the output (consecutive inputs give outputs that pass
// BigCrush). Used to turn hashes, seeds and counters into well-mixed values, so that
// neighbouring streams are decorrelated; a fixed recipe, so results never change between
// machines or versions.
inline constexpr uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}
// The first output of the reference SplitMix64 generator seeded with 0: shards, splits and
// synthetic data depend on this recipe never changing.
static_assert(splitmix64(0) == 0xe220a8397b1dcdafULL);

// Fills x with N(0, stddev^2) draws from a generator seeded with `seed`.
template <typename Real>
void fill_normal(std::span<Real> x, uint64_t seed, double stddev = 1.0) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> dist(0.0, stddev);
  for (Real& e : x) e = static_cast<Real>(dist(gen));
}

template <typename Real>
std::vector<Real> random_normal(size_t n, uint64_t seed, double stddev = 1.0) {
  std::vector<Real> x(n);
  fill_normal(std::span<Real>(x), seed, stddev);
  return x;
}

}  // namespace moba
