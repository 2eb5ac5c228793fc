// Deterministic random inputs for tests, benchmarks and tools: never zeros.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace moba {

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
