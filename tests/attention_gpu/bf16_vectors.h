// Host vectors to and from bf16 for the GPU tests: the bits of naive_bf16.h's rounding in
// CUDA's __nv_bfloat16, and normal draws rounded to bf16 (so that the GPU, the naive versions
// and the references see the same numbers).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "attention_gpu/naive_bf16.h"
#include "core/random.h"

namespace moba::test {

inline std::vector<float> from_bf16(const std::vector<__nv_bfloat16>& x) {
  std::vector<float> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    uint16_t b;
    std::memcpy(&b, static_cast<const void*>(&x[i]), 2);
    y[i] = bf16_value(b);
  }
  return y;
}
inline std::vector<__nv_bfloat16> to_bf16(const std::vector<float>& x) {
  std::vector<__nv_bfloat16> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const uint16_t b = bf16_bits(x[i]);
    std::memcpy(static_cast<void*>(&y[i]), &b, 2);
  }
  return y;
}
// n draws of N(0, 1), each rounded to bf16.
inline std::vector<float> bf16_normal(size_t n, uint64_t seed) {
  std::vector<float> x = random_normal<float>(n, seed);
  for (float& e : x) e = round_bf16(e);
  return x;
}

}  // namespace moba::test
