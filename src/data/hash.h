// Hashes the data pipeline relies on for decisions that must never change between
// machines or versions: the train/validation split, the document order in the shards,
// the shard checksums and the loader's random draws. All are fixed integer recipes, so
// the same corpus gives the same shards and the same (seed, step) gives the same batch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/random.h"

namespace moba::data {

// FNV-1a 64 (offset basis 0xcbf29ce484222325, prime 0x100000001b3), continued from
// `h` so that several buffers can be hashed as one stream.
inline constexpr uint64_t kFnvBasis = 0xcbf29ce484222325ULL;
inline uint64_t fnv1a64(const void* data, size_t n, uint64_t h = kFnvBasis) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}
inline uint64_t fnv1a64(std::string_view s, uint64_t h = kFnvBasis) {
  return fnv1a64(s.data(), s.size(), h);
}
// 16 lowercase hex digits: how checksums and hashes are written into JSON files.
inline std::string hex64(uint64_t x) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i, x >>= 4) s[i] = digits[x & 15];
  return s;
}

// splitmix64 (core/random.h) turns FNV hashes and counters into well-mixed 64-bit values.

// A uniform double in [0, 1) from the top 53 bits of x.
inline constexpr double unit_interval(uint64_t x) {
  return static_cast<double>(x >> 11) * 0x1.0p-53;
}

// A uniform integer in [0, n) from x (Lemire's multiply-shift; the bias is below n/2^64).
inline uint64_t below(uint64_t x, uint64_t n) {
  return static_cast<uint64_t>((static_cast<unsigned __int128>(x) * n) >> 64);
}

}  // namespace moba::data
