#include "scaling/paired.h"

#include "scaling/fit.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>

namespace moba::scaling {
namespace {

double mean_of(const std::vector<double>& x, const std::vector<int>& idx) {
  double s = 0.0;
  for (int i : idx) s += x[i];
  return s / static_cast<double>(idx.size());
}

// The 2.5% and 97.5% points of `draws`.
void percentiles(const std::vector<double>& draws, Estimate& e) {
  e.lo = quantile(draws, 0.025);
  e.hi = quantile(draws, 0.975);
}

}  // namespace

std::optional<PairedStats> paired_stats(const SizePair& p, int resamples, uint64_t seed,
                                        std::string* why) {
  auto fail = [&](const std::string& reason) -> std::optional<PairedStats> {
    if (why) *why = reason;
    return std::nullopt;
  };
  if (!p.full_point || !p.moba_point || !p.same_tokens)
    return fail("no evaluation at a common token count");
  const ValPoint &f = *p.full_point, &m = *p.moba_point;
  if (f.window_losses.empty() || m.window_losses.empty())
    return fail("val lines without window_losses (runs made before 2026-12)");
  if (f.window_losses.size() != m.window_losses.size())
    return fail("different numbers of validation windows");
  if (f.windows_hash.empty() || f.windows_hash != m.windows_hash)
    return fail("not the same validation windows (windows_hash differs or is missing)");
  const int n = static_cast<int>(f.window_losses.size());
  const size_t buckets = std::min(f.window_bucket_losses.empty() ? 0 : f.window_bucket_losses[0].size(),
                                  m.window_bucket_losses.empty() ? 0 : m.window_bucket_losses[0].size());
  PairedStats s;
  s.windows = n;
  std::vector<int> all(n);
  for (int i = 0; i < n; ++i) all[i] = i;
  s.full_loss = mean_of(f.window_losses, all);
  s.moba_loss = mean_of(m.window_losses, all);
  s.diff.value = s.moba_loss - s.full_loss;
  s.ratio.value = s.moba_loss / s.full_loss;
  std::vector<std::vector<double>> fb(buckets), mb(buckets);  // (buckets, windows)
  for (size_t b = 0; b < buckets; ++b)
    for (int w = 0; w < n; ++w) {
      fb[b].push_back(f.window_bucket_losses[w][b]);
      mb[b].push_back(m.window_bucket_losses[w][b]);
    }
  s.bucket_diff.resize(buckets);
  for (size_t b = 0; b < buckets; ++b) s.bucket_diff[b].value = mean_of(mb[b], all) - mean_of(fb[b], all);

  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> pick(0, n - 1);
  std::vector<double> d, r;
  std::vector<std::vector<double>> bd(buckets);
  std::vector<int> idx(n);
  for (int k = 0; k < resamples; ++k) {
    for (int& i : idx) i = pick(rng);  // one resample of windows, shared by both runs
    const double mf = mean_of(f.window_losses, idx), mm = mean_of(m.window_losses, idx);
    d.push_back(mm - mf);
    r.push_back(mm / mf);
    for (size_t b = 0; b < buckets; ++b) bd[b].push_back(mean_of(mb[b], idx) - mean_of(fb[b], idx));
  }
  percentiles(d, s.diff);
  percentiles(r, s.ratio);
  for (size_t b = 0; b < buckets; ++b) percentiles(bd[b], s.bucket_diff[b]);
  return s;
}

std::string paired_verdict(const std::vector<PairedStats>& stats) {
  if (stats.empty()) return "";
  double bound = 0.0;
  int better = 0, worse = 0;
  int64_t windows = stats[0].windows;
  for (const PairedStats& s : stats) {
    bound = std::max({bound, std::abs(s.ratio.lo - 1.0), std::abs(s.ratio.hi - 1.0)});
    if (s.ratio.hi < 1.0) ++better;
    if (s.ratio.lo > 1.0) ++worse;
    windows = std::min(windows, s.windows);
  }
  char buf[512];
  const int n = static_cast<int>(stats.size());
  std::snprintf(buf, sizeof buf,
                "MoBA's LM loss is within %.1f%% of full attention's at every size compared "
                "(%d size%s, 95%% bootstrap intervals over %lld validation windows, paired by "
                "window); ",
                100.0 * bound, n, n == 1 ? "" : "s", static_cast<long long>(windows));
  std::string v = buf;
  if (better == 0 && worse == 0)
    v += "no interval excludes equality, so these runs cannot tell the two apart.";
  else {
    std::snprintf(buf, sizeof buf,
                  "the interval excludes equality at %d size%s where MoBA is lower and %d where "
                  "it is higher.",
                  better, better == 1 ? "" : "s", worse);
    v += buf;
  }
  v += " Windows are one source of noise only: seed-to-seed variation of training is not in "
       "these intervals.";
  return v;
}

}  // namespace moba::scaling
