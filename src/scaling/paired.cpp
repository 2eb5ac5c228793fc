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
  std::vector<VerdictInterval> sizes;
  for (const PairedStats& s : stats) {
    VerdictInterval v;
    v.diff = s.diff;
    v.ratio = s.ratio;
    v.windows = s.windows;
    sizes.push_back(v);
  }
  return paired_verdict(sizes);
}

std::string paired_verdict(const std::vector<VerdictInterval>& sizes) {
  if (sizes.empty()) return "";
  double bound = 0.0;
  int better = 0, worse = 0, with_seeds = 0;
  int64_t windows = -1;
  for (const VerdictInterval& s : sizes) {
    bound = std::max({bound, std::abs(s.ratio.lo - 1.0), std::abs(s.ratio.hi - 1.0)});
    if (s.ratio.hi < 1.0) ++better;
    if (s.ratio.lo > 1.0) ++worse;
    if (s.windows > 0) windows = windows < 0 ? s.windows : std::min(windows, s.windows);
    with_seeds += s.seeds > 0;
  }
  char buf[512];
  const int n = static_cast<int>(sizes.size());
  // Where every interval lies on one side of equality the sentence says so first, with the
  // range of the point estimates ("lower than full attention's by 2.1% to 19.8%"), then the
  // bound as always.
  std::string lead = "MoBA's LM loss is within ";
  if (better == n || worse == n) {
    double lo = 1e300, hi = 0.0;
    for (const VerdictInterval& s : sizes) {
      lo = std::min(lo, std::abs(1.0 - s.ratio.value));
      hi = std::max(hi, std::abs(1.0 - s.ratio.value));
    }
    std::snprintf(buf, sizeof buf,
                  "MoBA's LM loss is %s than full attention's by %.1f%% to %.1f%% (point "
                  "estimates), and within ",
                  better == n ? "lower" : "higher", 100.0 * lo, 100.0 * hi);
    lead = buf;
  }
  std::string v;
  if (with_seeds == 0) {
    std::snprintf(buf, sizeof buf,
                  "%.1f%% of full attention's at every size compared "
                  "(%d size%s, 95%% bootstrap intervals over %lld validation windows, paired by "
                  "window); ",
                  100.0 * bound, n, n == 1 ? "" : "s", static_cast<long long>(windows));
    v = lead + buf;
  } else {
    // Which interval each size used, sizes with the same wording together.
    std::vector<std::pair<std::string, std::string>> used;  // (wording, sizes)
    for (const VerdictInterval& s : sizes) {
      const std::string seeds = "the t interval over " + std::to_string(s.seeds) + " seeds";
      const std::string boot =
          "the window bootstrap over " + std::to_string(s.windows) + " windows";
      std::string w;
      if (s.seeds == 0) w = boot;
      else if (s.windows == 0) w = seeds + " (windows not paired)";
      else if (s.from_seeds) w = seeds + " (wider than the window bootstrap)";
      else w = boot + " (wider than the t interval over " + std::to_string(s.seeds) + " seeds)";
      auto it = std::find_if(used.begin(), used.end(), [&](const auto& u) { return u.first == w; });
      if (it == used.end()) used.push_back({w, s.size}), it = used.end() - 1;
      else it->second += (it->second.empty() || s.size.empty() ? "" : ", ") + s.size;
    }
    std::snprintf(buf, sizeof buf,
                  "%.1f%% of full attention's at every size compared "
                  "(%d size%s; 95%% intervals, at each size with seeds the wider of the t "
                  "interval over seeds and the window bootstrap: ",
                  100.0 * bound, n, n == 1 ? "" : "s");
    v = lead + buf;
    for (size_t i = 0; i < used.size(); ++i)
      v += (i ? "; " : "") + used[i].first + (used[i].second.empty() ? "" : " at " + used[i].second);
    v += "); ";
  }
  if (better == 0 && worse == 0)
    v += "no interval excludes equality, so these runs cannot tell the two apart.";
  else {
    std::snprintf(buf, sizeof buf,
                  "the interval excludes equality at %d size%s where MoBA is lower and %d where "
                  "it is higher.",
                  better, better == 1 ? "" : "s", worse);
    v += buf;
  }
  if (with_seeds == 0)
    v += " Windows are one source of noise only: seed-to-seed variation of training is not in "
         "these intervals.";
  else if (with_seeds == n)
    v += " Every size has seed replicas, so seed-to-seed variation of training is in these "
         "intervals wherever it is the larger noise (section Seed noise).";
  else {
    std::snprintf(buf, sizeof buf,
                  " Seed-to-seed variation of training is in the intervals of the %d size%s with "
                  "seed replicas only (section Seed noise); at the other %d the windows are the "
                  "one source of noise counted.",
                  with_seeds, with_seeds == 1 ? "" : "s", n - with_seeds);
    v += buf;
  }
  return v;
}

}  // namespace moba::scaling
