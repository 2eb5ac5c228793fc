#include "train/synthetic.h"

#include <algorithm>
#include <numeric>
#include <random>

#include "core/error.h"
#include "train/config.h"

namespace moba::train {
namespace {

// splitmix64: decorrelates the seeds of neighbouring streams.
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Validation windows use streams far from the training ones.
constexpr uint64_t kValidationStream = 1ULL << 62;

}  // namespace

AssocRecallSource::AssocRecallSource(int64_t V, int64_t T, int64_t B, int64_t windows,
                                     uint64_t seed)
    : V_(V), T_(T), B_(B), windows_(windows), seed_(seed) {
  MOBA_CHECK(V >= 4, "synthetic:assoc_recall needs model.vocab_size >= 4, got ", V);
  MOBA_CHECK(T >= 3, "synthetic:assoc_recall needs model.seq_len >= 3, got ", T);
  pairs_ = std::max<int64_t>(1, std::min(V / 2, (T + 1) / 4));
}

std::vector<int32_t> AssocRecallSource::window(uint64_t stream) const {
  std::mt19937_64 gen(mix(seed_ ^ mix(stream)));
  const int64_t nk = V_ / 2, nv = V_ - nk;
  std::vector<int32_t> keys(static_cast<size_t>(nk));
  std::iota(keys.begin(), keys.end(), 0);
  for (int64_t i = 0; i < pairs_; ++i)  // partial Fisher-Yates: pairs_ distinct keys
    std::swap(keys[i], keys[i + static_cast<int64_t>(gen() % static_cast<uint64_t>(nk - i))]);
  std::vector<int32_t> values(static_cast<size_t>(pairs_));
  for (auto& v : values) v = static_cast<int32_t>(nk + static_cast<int64_t>(gen() % nv));
  std::vector<int32_t> w;
  w.reserve(static_cast<size_t>(T_ + 1));
  for (int64_t i = 0; i < pairs_ && static_cast<int64_t>(w.size()) < T_ + 1; ++i) {
    w.push_back(keys[i]);
    if (static_cast<int64_t>(w.size()) < T_ + 1) w.push_back(values[i]);
  }
  while (static_cast<int64_t>(w.size()) < T_ + 1) {
    const int64_t i = static_cast<int64_t>(gen() % static_cast<uint64_t>(pairs_));
    w.push_back(keys[i]);
    if (static_cast<int64_t>(w.size()) < T_ + 1) w.push_back(values[i]);
  }
  return w;
}

std::vector<uint8_t> AssocRecallSource::recall_mask() const {
  std::vector<uint8_t> mask(static_cast<size_t>(T_), 0);
  for (int64_t p = 2 * pairs_; p <= T_; ++p)  // token p is predicted at input position p-1
    if ((p - 2 * pairs_) % 2 == 1) mask[p - 1] = 1;
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
  return "synthetic:assoc_recall (V = " + std::to_string(V_) + ", " + std::to_string(pairs_) +
         " key-value pairs per window, then queries)";
}

std::unique_ptr<BatchSource> make_batch_source(const RunConfig& cfg, const std::string& data_dir) {
  const std::string data = data_dir.empty() ? cfg.data : data_dir;
  if (data == "synthetic:assoc_recall")
    return std::make_unique<AssocRecallSource>(cfg.model.vocab_size, cfg.model.seq_len,
                                               cfg.train.batch_size, cfg.eval.windows,
                                               cfg.train.seed);
  MOBA_CHECK(data.rfind("synthetic:", 0) != 0, "unknown synthetic data source '", data,
             "'; the synthetic sources are: synthetic:assoc_recall");
  MOBA_CHECK(false, "data '", data, "': reading token shards is not plugged into the trainer "
             "yet (src/data); use data = \"synthetic:assoc_recall\" for now");
}

}  // namespace moba::train
