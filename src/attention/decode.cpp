// The CPU KV cache and one-token decode attention (decode.h). Each (sequence, query head)
// row attends a short list of cached position ranges, as attention_cpu.cpp's rows do over
// the packed axis, with the same arithmetic (double accumulation, ranges in ascending
// block order), so a decode step reproduces row len-1 of the full-sequence reference.
#include "attention/decode.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "attention/attend_row.h"
#include "core/error.h"

namespace moba::attn {
namespace {

// Rows below this many multiply-adds (all heads, all cached keys) stay on one thread: a
// parallel region costs microseconds, a small decode step less (as model/parallel.h).
constexpr int64_t kParallelMinWork = int64_t{1} << 16;

struct Range {
  int64_t begin, end;  // positions of one sequence, end exclusive
};

// Softmax attention of one query row over `ranges` of sequence b's cached keys, kv head
// kvh: out (D), returns the natural log-sum-exp of the scaled scores. `s` and `acc` are
// scratch. The row arithmetic is attend_row's, as in attention_cpu.cpp's forward.
template <typename Real>
double attend(const KVCache<Real>& c, int64_t b, int64_t kvh, const Real* qr, double scale,
              const std::vector<Range>& ranges, std::vector<double>& s, std::vector<double>& acc,
              Real* out) {
  const int64_t D = c.head_dim();
  return detail::attend_row(
      qr, D, scale, ranges, [&](int64_t t) { return c.k(b, t) + kvh * D; },
      [&](int64_t t) { return c.v(b, t) + kvh * D; }, s, acc, out);
}

// Shared checks of both decode functions: heads, sizes, every sequence non-empty.
// Returns the softmax scale.
template <typename Real>
double check_decode(const char* fn, const KVCache<Real>& c, int64_t Hq, const Options& opt,
                    size_t q, size_t out, size_t lse) {
  const int64_t B = c.batch(), Hkv = c.kv_heads(), D = c.head_dim();
  MOBA_CHECK(B >= 1, fn, ": the KV cache is empty (default-constructed)");
  MOBA_CHECK(Hq >= 1 && Hq % Hkv == 0, fn, ": number of query heads Hq = ", Hq,
             " must be a positive multiple of the cache's key/value heads Hkv = ", Hkv);
  const size_t q_elems = static_cast<size_t>(B * Hq * D);
  MOBA_CHECK(q == q_elems, fn, ": tensor q has ", q, " elements, (B, Hq, D) = (", B, ", ", Hq,
             ", ", D, ") needs ", q_elems);
  MOBA_CHECK(out == q_elems, fn, ": tensor out has ", out, " elements, (B, Hq, D) = (", B, ", ",
             Hq, ", ", D, ") needs ", q_elems);
  MOBA_CHECK(lse == static_cast<size_t>(B * Hq), fn, ": tensor lse has ", lse,
             " elements, (B, Hq) = (", B, ", ", Hq, ") needs ", B * Hq);
  for (int64_t b = 0; b < B; ++b)
    MOBA_CHECK(c.len(b) >= 1, fn, ": sequence ", b,
               " has no token in the KV cache (append the query's token before decoding)");
  Layout l;  // scale_for reads the head dim only
  l.head_dim = D;
  return opt.scale_for(l);
}

template <typename Real>
int64_t work_of(const KVCache<Real>& c, int64_t Hq) {
  int64_t keys = 0;
  for (int64_t b = 0; b < c.batch(); ++b) keys += c.len(b);
  return keys * Hq * c.head_dim();
}

}  // namespace

// ---- KVCache --------------------------------------------------------------------------

template <typename Real>
KVCache<Real>::KVCache(int64_t batch, int64_t capacity, int64_t kv_heads, int64_t head_dim,
                       int64_t block_size)
    : B_(batch), T_(capacity), Hkv_(kv_heads), D_(head_dim), S_(block_size) {
  MOBA_CHECK(batch >= 1, "KV cache: batch B must be >= 1, got ", batch);
  MOBA_CHECK(capacity >= 1, "KV cache: capacity T_max must be >= 1, got ", capacity);
  MOBA_CHECK(kv_heads >= 1, "KV cache: key/value heads Hkv must be >= 1, got ", kv_heads);
  MOBA_CHECK(head_dim >= 1, "KV cache: head dim D must be >= 1, got ", head_dim);
  MOBA_CHECK(block_size >= 1, "KV cache: block size S must be >= 1, got ", block_size);
  const size_t row = static_cast<size_t>(Hkv_ * D_);
  k_.assign(static_cast<size_t>(B_ * T_) * row, Real(0));
  v_.assign(k_.size(), Real(0));
  means_.assign(static_cast<size_t>(B_ * (T_ / S_)) * row, 0.0f);
  sums_.assign(static_cast<size_t>(B_) * row, 0.0);
  len_.assign(static_cast<size_t>(B_), 0);
}

template <typename Real>
void KVCache<Real>::reset(int64_t b) {
  MOBA_CHECK(b >= 0 && b < B_, "KV cache: sequence ", b, " is not in [0, ", B_, ")");
  len_[b] = 0;
  std::fill_n(sums_.begin() + b * Hkv_ * D_, Hkv_ * D_, 0.0);
}

template <typename Real>
void KVCache<Real>::append(int64_t b, int64_t n, std::span<const Real> k_rows,
                           std::span<const Real> v_rows) {
  MOBA_CHECK(b >= 0 && b < B_, "KV cache: sequence ", b, " is not in [0, ", B_, ")");
  MOBA_CHECK(n >= 0, "KV cache: cannot append n = ", n, " tokens");
  MOBA_CHECK(len_[b] + n <= T_, "KV cache: appending ", n, " tokens to sequence ", b, " holding ",
             len_[b], " exceeds its capacity of ", T_, " tokens");
  const size_t row = static_cast<size_t>(Hkv_ * D_), want = static_cast<size_t>(n) * row;
  MOBA_CHECK(k_rows.size() == want, "KV cache: k_rows has ", k_rows.size(),
             " elements, (n, Hkv, D) = (", n, ", ", Hkv_, ", ", D_, ") needs ", want);
  MOBA_CHECK(v_rows.size() == want, "KV cache: v_rows has ", v_rows.size(),
             " elements, (n, Hkv, D) = (", n, ", ", Hkv_, ", ", D_, ") needs ", want);
  double* sum = &sums_[static_cast<size_t>(b) * row];
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = len_[b];
    const Real* kr = &k_rows[static_cast<size_t>(i) * row];
    std::copy_n(kr, row, &k_[static_cast<size_t>(b * T_ + t) * row]);
    std::copy_n(&v_rows[static_cast<size_t>(i) * row], row, &v_[static_cast<size_t>(b * T_ + t) * row]);
    // The running sum of the block in position order, from 0.0: gate.h's block_means.
    for (size_t e = 0; e < row; ++e) sum[e] += static_cast<double>(kr[e]);
    len_[b] = t + 1;
    if (len_[b] % S_ == 0) {  // block (t / S) is full: its mean is final
      float* m = &means_[static_cast<size_t>(b * (T_ / S_) + t / S_) * row];
      for (size_t e = 0; e < row; ++e) m[e] = static_cast<float>(sum[e] / static_cast<double>(S_));
      std::fill_n(sum, row, 0.0);
    }
  }
}

template <typename Real>
size_t KVCache<Real>::bytes() const {
  return (k_.size() + v_.size()) * sizeof(Real) + means_.size() * sizeof(float) +
         sums_.size() * sizeof(double) + len_.size() * sizeof(int64_t);
}

template <typename Real>
double KVCache<Real>::bytes_per_token(int64_t kv_heads, int64_t head_dim, int64_t block_size,
                                      size_t elem_bytes) {
  MOBA_CHECK(kv_heads >= 1 && head_dim >= 1 && block_size >= 1,
             "KV cache: Hkv, D and S must be >= 1, got ", kv_heads, ", ", head_dim, ", ",
             block_size);
  const double row = static_cast<double>(kv_heads * head_dim);
  return 2.0 * row * static_cast<double>(elem_bytes) +
         row * static_cast<double>(sizeof(float)) / static_cast<double>(block_size);
}

// ---- decode ---------------------------------------------------------------------------

template <typename Real>
void decode_dense(const KVCache<Real>& cache, int64_t num_q_heads, const Options& opt,
                  std::span<const Real> q, std::span<Real> out, std::span<Real> lse) {
  const double scale =
      check_decode("decode_dense", cache, num_q_heads, opt, q.size(), out.size(), lse.size());
  const int64_t B = cache.batch(), Hq = num_q_heads, D = cache.head_dim();
  const int64_t group = Hq / cache.kv_heads();
#pragma omp parallel if (work_of(cache, Hq) >= kParallelMinWork)
  {
    std::vector<Range> ranges;
    std::vector<double> s, acc;
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < Hq; ++h) {
        ranges.assign(1, Range{0, cache.len(b)});
        const size_t row = static_cast<size_t>(b * Hq + h);
        lse[row] = static_cast<Real>(
            attend(cache, b, h / group, &q[row * D], scale, ranges, s, acc, &out[row * D]));
      }
  }
}

template <typename Real>
void decode_moba(const KVCache<Real>& cache, int64_t num_q_heads, const MobaConfig& cfg,
                 const Options& opt, std::span<const Real> q, std::span<Real> out,
                 std::span<Real> lse, std::vector<int32_t>* sel) {
  const double scale =
      check_decode("decode_moba", cache, num_q_heads, opt, q.size(), out.size(), lse.size());
  cfg.validate();
  MOBA_CHECK(cfg.block_size == cache.block_size(), "decode_moba: MoBA block size S = ",
             cfg.block_size, " differs from the KV cache's block size ", cache.block_size(),
             " (its block means are over blocks of that size)");
  const int64_t B = cache.batch(), Hq = num_q_heads, D = cache.head_dim(), Hkv = cache.kv_heads();
  const int64_t S = cfg.block_size, K = cfg.top_k, group = Hq / Hkv;
  std::vector<int32_t> local;
  std::vector<int32_t>& slots_all = sel ? *sel : local;
  slots_all.assign(static_cast<size_t>(B * Hq * K), -1);
  // A non-finite gate score is an error, but exceptions cannot leave the parallel region:
  // the first one is recorded and thrown after it.
  bool bad = false;
  int64_t bad_b = 0, bad_h = 0, bad_j = 0;
#pragma omp parallel if (work_of(cache, Hq) >= kParallelMinWork)
  {
    std::vector<Range> ranges;
    std::vector<double> s, acc;
    std::vector<std::pair<float, int32_t>> scored;  // (score, block id) of past blocks
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < Hq; ++h) {
        const int64_t len = cache.len(b), c = (len - 1) / S;  // current block
        const int64_t kvh = h / group;
        const size_t row = static_cast<size_t>(b * Hq + h);
        const Real* qr = &q[row * D];
        int32_t* slots = &slots_all[row * K];
        if (c <= K - 1) {  // every past block fits: dense causal
          for (int64_t j = 0; j <= c; ++j) slots[j] = static_cast<int32_t>(j);
        } else {
          // Scores as gate.h: fp32 q . mean accumulated in double; past blocks are full,
          // so their means are in the cache.
          scored.clear();
          bool finite = true;
          for (int64_t j = 0; j < c; ++j) {
            const float* m = cache.mean(b, j) + kvh * D;
            double a = 0.0;
            for (int64_t d = 0; d < D; ++d) a += static_cast<double>(qr[d]) * m[d];
            const float score = static_cast<float>(a);
            if (!std::isfinite(score) && finite) {
              finite = false;
#pragma omp critical(moba_decode_error)
              if (!bad) bad = true, bad_b = b, bad_h = h, bad_j = j;
            }
            scored.emplace_back(score, static_cast<int32_t>(j));
          }
          if (!finite) continue;
          // Highest score first; equal scores: the more recent (larger) block first.
          std::partial_sort(scored.begin(), scored.begin() + (K - 1), scored.end(),
                            [](const auto& x, const auto& y) {
                              return x.first != y.first ? x.first > y.first : x.second > y.second;
                            });
          for (int64_t i = 0; i < K - 1; ++i) slots[i] = scored[i].second;
          slots[K - 1] = static_cast<int32_t>(c);
          std::sort(slots, slots + K);
        }
        ranges.clear();
        for (int64_t i = 0; i < K; ++i) {
          if (slots[i] < 0) continue;
          const int64_t b0 = slots[i] * S;
          ranges.push_back({b0, std::min(b0 + S, len)});
        }
        lse[row] = static_cast<Real>(attend(cache, b, kvh, qr, scale, ranges, s, acc, &out[row * D]));
      }
  }
  MOBA_CHECK(!bad, "decode_moba: MoBA gate score is not finite (NaN or inf in q or k) for "
             "sequence ", bad_b, ", query head ", bad_h, ", block ", bad_j);
}

template class KVCache<float>;
template class KVCache<double>;

#define MOBA_INSTANTIATE(Real)                                                                 \
  template void decode_dense<Real>(const KVCache<Real>&, int64_t, const Options&,              \
                                   std::span<const Real>, std::span<Real>, std::span<Real>);   \
  template void decode_moba<Real>(const KVCache<Real>&, int64_t, const MobaConfig&,            \
                                  const Options&, std::span<const Real>, std::span<Real>,      \
                                  std::span<Real>, std::vector<int32_t>*);
MOBA_INSTANTIATE(float)
MOBA_INSTANTIATE(double)
#undef MOBA_INSTANTIATE

}  // namespace moba::attn
