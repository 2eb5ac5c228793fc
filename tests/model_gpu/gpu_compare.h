// Test plumbing for the GPU layer kernels: device buffers that poison themselves, bf16
// conversions, and the one comparison every check uses (compare), with its error bound.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "attention_gpu/bf16_vectors.h"  // from_bf16, to_bf16
#include "attention_gpu/device_buffer.h"
#include "attention_gpu/naive_bf16.h"  // round_bf16, bf16_bits, bf16_value
#include "core/cuda_check.cuh"
#include "core/random.h"
#include "model/cuda/layers_cuda.h"

namespace moba::test {

using bf16 = model::cuda::bf16;

// Rounds in place: what a bf16 tensor holds after a float computation stores it.
inline std::vector<float> rounded(std::vector<float> x) {
  for (float& e : x) e = round_bf16(e);
  return x;
}
// N(0, stddev^2) values that are exactly bf16: the GPU, the naive version and the fp64
// reference all see the same numbers.
inline std::vector<float> random_bf16(size_t n, uint64_t seed, double stddev = 1.0) {
  return rounded(random_normal<float>(n, seed, stddev));
}
template <typename A>
std::vector<double> to_double(const std::vector<A>& x) {
  return std::vector<double>(x.begin(), x.end());
}

// max |a - ref| / max |ref|: one scale for a whole tensor, so elements near zero neither
// dominate nor escape.
template <typename A>
double max_err(const std::vector<A>& a, const std::vector<double>& ref) {
  if (a.size() != ref.size()) return INFINITY;
  double err = 0.0, mag = 1e-30;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::abs(static_cast<double>(a[i]) - ref[i]);
    err = std::isnan(d) ? INFINITY : std::max(err, d);
    mag = std::max(mag, std::abs(ref[i]));
  }
  return err / mag;
}

// The error bounds, written once per output dtype. A kernel's error against the fp64 CPU
// layer may be at most twice that of the naive implementation (the CPU layer in float,
// its outputs stored as the kernel stores them: rounded to bf16 for bf16 outputs), plus a
// floor: for bf16 outputs 1e-4 (an eighth of half a bf16 ulp; covers the naive error
// landing just under a rounding boundary the kernel lands just over), for fp32 outputs
// 1e-5 (fp32 sums of up to 64K terms in another order than the CPU's double sums).
enum class Out { kBf16, kFp32 };
inline double bound(Out dtype, double naive_err) {
  return 2.0 * naive_err + (dtype == Out::kBf16 ? 1e-4 : 1e-5);
}

inline bool all_finite(const std::vector<float>& x) {
  return std::all_of(x.begin(), x.end(), [](float e) { return std::isfinite(e); });
}

inline void compare(const char* what, Out dtype, const std::vector<float>& gpu,
                    const std::vector<double>& ref, const std::vector<float>& naive) {
  ASSERT_TRUE(all_finite(gpu)) << what << ": NaN or inf (an element left unwritten?)";
  const double eg = max_err(gpu, ref), en = max_err(naive, ref), b = bound(dtype, en);
  std::printf("    %-10s gpu err %.3e  naive err %.3e  bound %.3e\n", what, eg, en, b);
  EXPECT_LE(eg, b) << what;
}

}  // namespace moba::test
