#include "train/synthetic.h"

#include <algorithm>
#include <numeric>
#include <random>

#include "core/error.h"
#include "core/random.h"
#include "train/config.h"

namespace moba::train {
namespace {

// Validation windows use streams far from the training ones.
constexpr uint64_t kValidationStream = 1ULL << 62;

}  // namespace

AssocRecallSource::AssocRecallSource(int64_t V, int64_t T, int64_t B, int64_t windows,
                                     uint64_t seed)
    : V_(V), T_(T), B_(B), windows_(windows), seed_(seed) {
  n_ = 0;
  while (2 * (n_ + 1) + (n_ + 1) * (n_ + 1) < V) ++n_;
  MOBA_CHECK(n_ >= 2,
             "synthetic:assoc_recall needs model.vocab_size >= 9 (2 keys, 2 values, "
             "4 pair tokens, a filler), got ",
             V);
  MOBA_CHECK((T + 1) / 2 >= n_ && T >= 4, "synthetic:assoc_recall with ", n_,
             " keys needs model.seq_len >= ", std::max<int64_t>(4, 2 * n_), ", got ", T);
}

std::vector<int32_t> AssocRecallSource::window(uint64_t stream) const {
  std::mt19937_64 gen(splitmix64(seed_ ^ splitmix64(stream)));
  auto uniform = [&](int64_t n) { return static_cast<int64_t>(gen() % static_cast<uint64_t>(n)); };
  const int64_t n = n_, first_filler = 2 * n + n * n, fillers = V_ - first_filler;
  const int64_t L = T_ + 1, context = L / 2;
  std::vector<int32_t> w(static_cast<size_t>(L));
  for (int64_t p = 0; p < context; ++p)
    w[p] = static_cast<int32_t>(first_filler + uniform(fillers));
  // Each key's pair token at a distinct random context position (partial Fisher-Yates).
  std::vector<int64_t> pos(static_cast<size_t>(context));
  std::iota(pos.begin(), pos.end(), 0);
  std::vector<int64_t> value(static_cast<size_t>(n));
  for (int64_t k = 0; k < n; ++k) {
    std::swap(pos[k], pos[k + uniform(context - k)]);
    value[k] = uniform(n);
    w[pos[k]] = static_cast<int32_t>(2 * n + k * n + value[k]);
  }
  for (int64_t p = context; p < L; p += 2) {
    const int64_t k = uniform(n);
    w[p] = static_cast<int32_t>(k);
    if (p + 1 < L) w[p + 1] = static_cast<int32_t>(n + value[k]);
  }
  return w;
}

std::vector<uint8_t> AssocRecallSource::recall_mask() const {
  std::vector<uint8_t> mask(static_cast<size_t>(T_), 0);
  const int64_t context = (T_ + 1) / 2;
  for (int64_t p = context + 1; p <= T_; p += 2) mask[p - 1] = 1;  // token p at input p-1
  return mask;
}

model::Batch AssocRecallSource::train_batch(uint64_t index) {
  model::Batch b;
  b.B = B_;
  b.T = T_;
  b.tokens.reserve(static_cast<size_t>(B_ * (T_ + 1)));
  for (int64_t r = 0; r < B_; ++r) {
    const std::vector<int32_t> w = window(index * static_cast<uint64_t>(B_) + r);
    b.tokens.insert(b.tokens.end(), w.begin(), w.end());
  }
  return b;
}

std::vector<Window> AssocRecallSource::validation() {
  std::vector<Window> out;
  for (int64_t i = 0; i < windows_; ++i) out.push_back({window(kValidationStream + i), true});
  return out;
}

std::string AssocRecallSource::describe() const {
  return "synthetic:assoc_recall (V = " + std::to_string(V_) + ": " + std::to_string(n_) +
         " keys, " + std::to_string(V_ - 2 * n_ - n_ * n_) +
         " fillers; pairs in the first half, queries in the second)";
}

}  // namespace moba::train
