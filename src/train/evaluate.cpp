#include "train/evaluate.h"

#include <algorithm>

#include "core/error.h"
#include "data/hash.h"

namespace moba::train {

EvalResult evaluate(model::Model<float>& model, std::span<const float> params,
                    const std::vector<Window>& windows, int64_t eval_batch, int64_t bucket_size,
                    bool moba_phase) {
  return evaluate(
      [&](const model::Batch& b) {
        model.forward(params, b, moba_phase);
        const std::span<const float> l = model.token_losses();
        return std::vector<float>(l.begin(), l.end());
      },
      windows, eval_batch, bucket_size);
}

EvalResult evaluate(const TokenLossFn& forward, const std::vector<Window>& windows,
                    int64_t eval_batch, int64_t bucket_size) {
  MOBA_CHECK(!windows.empty(), "validation has no windows");
  MOBA_CHECK(bucket_size >= 1, "eval.bucket_size must be >= 1, got ", bucket_size);
  const int64_t T = static_cast<int64_t>(windows[0].tokens.size()) - 1;
  const int64_t n_buckets = (T + bucket_size - 1) / bucket_size;
  std::vector<double> pos_sum(T, 0.0);
  double trailing_sum = 0.0;
  int64_t trailing_count = 0;
  EvalResult r;
  for (size_t w0 = 0; w0 < windows.size(); w0 += static_cast<size_t>(eval_batch)) {
    const size_t w1 = std::min(windows.size(), w0 + static_cast<size_t>(eval_batch));
    model::Batch b;
    b.B = static_cast<int64_t>(w1 - w0);
    b.T = T;
    for (size_t w = w0; w < w1; ++w) {
      MOBA_CHECK(static_cast<int64_t>(windows[w].tokens.size()) == T + 1, "validation window ", w,
                 " holds ", windows[w].tokens.size(), " tokens, the others ", T + 1);
      b.tokens.insert(b.tokens.end(), windows[w].tokens.begin(), windows[w].tokens.end());
    }
    const std::vector<float> losses = forward(b);  // (B*T)
    MOBA_CHECK(losses.size() == static_cast<size_t>(b.B * T), "evaluation forward returned ",
               losses.size(), " losses for ", b.B * T, " positions");
    for (size_t w = w0; w < w1; ++w) {
      const float* l = losses.data() + (w - w0) * static_cast<size_t>(T);
      double window_sum = 0.0;
      std::vector<double> buckets(n_buckets, 0.0);
      for (int64_t t = 0; t < T; ++t) {
        pos_sum[t] += l[t];
        window_sum += l[t];
        buckets[t / bucket_size] += l[t];
      }
      r.window_losses.push_back(window_sum / static_cast<double>(T));
      for (int64_t i = 0; i < n_buckets; ++i)
        buckets[i] /= static_cast<double>(std::min(T, (i + 1) * bucket_size) - i * bucket_size);
      r.window_bucket_losses.push_back(std::move(buckets));
      if (windows[w].single_document) {
        for (int64_t t = (n_buckets - 1) * bucket_size; t < T; ++t) trailing_sum += l[t];
        trailing_count += T - (n_buckets - 1) * bucket_size;
      }
    }
  }
  r.windows = static_cast<int64_t>(windows.size());
  uint64_t h = data::kFnvBasis;
  for (const Window& w : windows)
    h = data::fnv1a64(w.tokens.data(), w.tokens.size() * sizeof(int32_t), h);
  r.windows_hash = data::hex64(h);
  r.bucket_size = bucket_size;
  const double nw = static_cast<double>(windows.size());
  double total = 0.0;
  for (int64_t t = 0; t < T; ++t) {
    total += pos_sum[t];
    r.position_losses.push_back(pos_sum[t] / nw);
  }
  r.loss = total / (nw * static_cast<double>(T));
  for (int64_t i = 0; i < n_buckets; ++i) {
    const int64_t a = i * bucket_size, e = std::min(T, a + bucket_size);
    double s = 0.0;
    for (int64_t t = a; t < e; ++t) s += pos_sum[t];
    r.bucket_losses.push_back(s / (nw * static_cast<double>(e - a)));
  }
  if (trailing_count > 0) r.trailing_loss = trailing_sum / static_cast<double>(trailing_count);
  return r;
}

}  // namespace moba::train
