// Seed noise: Student t intervals over training seeds, the runs fits use, the verdict's
// interval (seeds.h).
#include "scaling/seeds.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <numbers>

#include "core/error.h"

namespace moba::scaling {

double student_t_cdf(double t, int64_t dof) {
  MOBA_CHECK(dof >= 1, "Student t: degrees of freedom must be >= 1, got ", dof);
  MOBA_CHECK(!std::isnan(t), "Student t: t is NaN");
  if (std::isinf(t)) return t > 0 ? 1.0 : 0.0;
  // A = P(|T| <= |t|) (Abramowitz and Stegun 26.7.3-4), with theta = atan(|t| / sqrt(dof)):
  //   odd dof:  2/pi (theta + sin cos (1 + 2/3 cos^2 + 2.4/(3.5) cos^4 + ...)), dof - 1 terms / 2
  //   even dof: sin (1 + 1/2 cos^2 + 1.3/(2.4) cos^4 + ...), dof / 2 terms
  const double theta = std::atan(std::fabs(t) / std::sqrt(static_cast<double>(dof)));
  const double s = std::sin(theta), c = std::cos(theta), c2 = c * c;
  double a;
  if (dof % 2 == 1) {
    double sum = 0.0, term = 1.0;  // term k: (2.4...2k) / (3.5...(2k+1)) cos^2k
    for (int64_t k = 0; k <= (dof - 3) / 2; ++k) {
      if (k > 0) term *= c2 * static_cast<double>(2 * k) / static_cast<double>(2 * k + 1);
      sum += term;
    }
    a = 2.0 / std::numbers::pi * (theta + s * c * sum);
  } else {
    double sum = 0.0, term = 1.0;  // term k: (1.3...(2k-1)) / (2.4...2k) cos^2k
    for (int64_t k = 0; k <= (dof - 2) / 2; ++k) {
      if (k > 0) term *= c2 * static_cast<double>(2 * k - 1) / static_cast<double>(2 * k);
      sum += term;
    }
    a = s * sum;
  }
  a = std::clamp(a, 0.0, 1.0);
  return t >= 0 ? 0.5 + 0.5 * a : 0.5 - 0.5 * a;
}

double student_t_quantile(double p, int64_t dof) {
  MOBA_CHECK(dof >= 1, "Student t: degrees of freedom must be >= 1, got ", dof);
  MOBA_CHECK(p > 0.0 && p < 1.0, "Student t: the quantile's probability must be in (0, 1), got ", p);
  if (p == 0.5) return 0.0;
  if (p < 0.5) return -student_t_quantile(1.0 - p, dof);
  double lo = 0.0, hi = 1.0;
  while (student_t_cdf(hi, dof) < p) {
    lo = hi;
    hi *= 2.0;
    MOBA_CHECK(hi < 1e300, "Student t: no quantile ", p, " for ", dof, " degrees of freedom");
  }
  for (int i = 0; i < 200 && hi - lo > 1e-12 * std::max(1.0, hi); ++i) {
    const double mid = 0.5 * (lo + hi);
    (student_t_cdf(mid, dof) < p ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

TInterval t_interval(const std::vector<double>& x, double level) {
  MOBA_CHECK(x.size() >= 2, "a t interval needs at least 2 values, got ", x.size());
  MOBA_CHECK(level > 0.0 && level < 1.0, "a t interval's level must be in (0, 1), got ", level);
  TInterval r;
  r.n = static_cast<int64_t>(x.size());
  for (double v : x) r.mean += v;
  r.mean /= static_cast<double>(r.n);
  double ss = 0.0;
  for (double v : x) ss += (v - r.mean) * (v - r.mean);
  r.sd = std::sqrt(ss / static_cast<double>(r.n - 1));
  const double half = student_t_quantile(0.5 + 0.5 * level, r.n - 1) * r.sd /
                      std::sqrt(static_cast<double>(r.n));
  r.lo = r.mean - half;
  r.hi = r.mean + half;
  return r;
}

std::string replica_key(const RunInfo& r) {
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "%s|%lld %lld %lld %lld %lld %lld|T%lld V%lld S%lld K%lld|steps %lld wu %lld "
                "tied %d lr %.9g tokens %.9g",
                r.attention.c_str(), static_cast<long long>(r.params_non_embedding),
                static_cast<long long>(r.layers), static_cast<long long>(r.heads),
                static_cast<long long>(r.kv_heads), static_cast<long long>(r.width),
                static_cast<long long>(r.head_dim), static_cast<long long>(r.seq_len),
                static_cast<long long>(r.vocab_size), static_cast<long long>(r.block_size),
                static_cast<long long>(r.top_k), static_cast<long long>(r.steps),
                static_cast<long long>(r.warmup_steps), r.tied_embeddings, r.lr,
                r.tokens_planned);
  return buf;
}

std::vector<bool> fit_runs(const std::vector<Run>& runs) {
  std::map<std::string, int64_t> lowest;  // replica key -> lowest known seed
  for (const Run& r : runs) {
    if (r.info.seed < 0) continue;
    const auto [it, fresh] = lowest.emplace(replica_key(r.info), r.info.seed);
    if (!fresh) it->second = std::min(it->second, r.info.seed);
  }
  std::vector<bool> keep;
  for (const Run& r : runs)
    keep.push_back(r.info.seed < 0 || lowest.at(replica_key(r.info)) == r.info.seed);
  return keep;
}

std::vector<SizeSeeds> seed_noise(const std::vector<SizePair>& pairs,
                                  std::vector<std::string>* notes) {
  // Pairs of known, equal seeds, grouped by the two runs' keys in the order first met.
  std::vector<std::string> order;
  std::map<std::string, std::vector<size_t>> groups;
  for (size_t i = 0; i < pairs.size(); ++i) {
    const SizePair& p = pairs[i];
    if (!p.full || !p.moba || !p.full_point || !p.moba_point) continue;
    if (p.full->info.seed < 0 || p.full->info.seed != p.moba->info.seed) continue;
    const std::string key = replica_key(p.full->info) + " / " + replica_key(p.moba->info);
    if (!groups.count(key)) order.push_back(key);
    groups[key].push_back(i);
  }
  std::vector<SizeSeeds> out;
  for (const std::string& key : order) {
    std::vector<size_t> idx = groups[key];
    if (idx.size() < 2) continue;
    std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) {
      return pairs[a].full->info.seed < pairs[b].full->info.seed;
    });
    bool repeated = false;
    for (size_t k = 1; k < idx.size(); ++k)
      repeated |= pairs[idx[k]].full->info.seed == pairs[idx[k - 1]].full->info.seed;
    if (repeated) {
      if (notes)
        notes->push_back("seed noise: the runs of " + pairs[idx[0]].full->info.name +
                         "'s size repeat a seed; left out of the seed statistics");
      continue;
    }
    SizeSeeds s;
    s.pairs = idx;
    s.full.attention = "full";
    s.moba.attention = "moba";
    for (size_t i : idx) {
      const SizePair& p = pairs[i];
      const int64_t seed = p.full->info.seed;
      s.seeds.push_back(seed);
      s.full.seeds.push_back(seed);
      s.moba.seeds.push_back(seed);
      s.full.losses.push_back(p.full->last_val()->loss);
      s.moba.losses.push_back(p.moba->last_val()->loss);
      s.diff.push_back(p.moba_point->loss - p.full_point->loss);
      s.ratio.push_back(p.moba_point->loss / p.full_point->loss);
    }
    s.full.stats = t_interval(s.full.losses);
    s.moba.stats = t_interval(s.moba.losses);
    s.diff_ci = t_interval(s.diff);
    s.ratio_ci = t_interval(s.ratio);
    out.push_back(std::move(s));
  }
  return out;
}

VerdictInterval verdict_interval(const std::string& size, const std::optional<PairedStats>& windows,
                                 const SizeSeeds* seeds) {
  MOBA_CHECK(windows || seeds, "verdict_interval: ", size,
             " has neither a window bootstrap nor seed replicas");
  VerdictInterval v;
  v.size = size;
  if (windows) v.windows = windows->windows;
  if (seeds) v.seeds = static_cast<int64_t>(seeds->seeds.size());
  // The wider interval of the difference in nats; a tie keeps the window bootstrap.
  v.from_seeds = seeds && (!windows || seeds->diff_ci.hi - seeds->diff_ci.lo >
                                           windows->diff.hi - windows->diff.lo);
  if (v.from_seeds) {
    v.diff = {seeds->diff_ci.mean, seeds->diff_ci.lo, seeds->diff_ci.hi};
    v.ratio = {seeds->ratio_ci.mean, seeds->ratio_ci.lo, seeds->ratio_ci.hi};
  } else {
    v.diff = windows->diff;
    v.ratio = windows->ratio;
  }
  return v;
}

}  // namespace moba::scaling
