#include "scaling/frontier.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace moba::scaling {

double interpolate_loglog(const Curve& curve, double c) {
  const auto& xs = curve.c;
  if (xs.empty() || c < xs.front() || c > xs.back()) return kNaN;
  // First point with compute >= c; c == xs.front() gives index 0.
  const size_t hi = static_cast<size_t>(std::lower_bound(xs.begin(), xs.end(), c) - xs.begin());
  if (xs[hi] == c) return curve.loss[hi];
  const size_t lo = hi - 1;
  const double t = (std::log(c) - std::log(xs[lo])) / (std::log(xs[hi]) - std::log(xs[lo]));
  return std::exp(std::log(curve.loss[lo]) + t * (std::log(curve.loss[hi]) - std::log(curve.loss[lo])));
}

std::vector<FrontierPoint> lower_envelope(std::span<const Curve> curves, int points_per_decade) {
  MOBA_CHECK(points_per_decade >= 1, "grid points per decade must be >= 1, got ",
             points_per_decade);
  double cmin = INFINITY, cmax = 0;
  for (const Curve& cv : curves) {
    if (cv.empty()) continue;
    cmin = std::min(cmin, cv.c.front());
    cmax = std::max(cmax, cv.c.back());
  }
  std::vector<FrontierPoint> out;
  if (!(cmax > 0)) return out;  // no points at all
  const double decades = std::log10(cmax / cmin);
  const int g = std::max(2, static_cast<int>(std::ceil(points_per_decade * decades - 1e-9)) + 1);
  for (int i = 0; i < g; ++i) {
    // Pin the ends exactly so that the extreme curves cover them despite rounding.
    const double c = i == 0 ? cmin
                     : i == g - 1 ? cmax
                                  : cmin * std::pow(10.0, decades * i / (g - 1));
    FrontierPoint best{c, INFINITY, -1};
    for (const Curve& cv : curves) {
      const double l = interpolate_loglog(cv, c);
      if (std::isfinite(l) && l < best.loss) best = {c, l, cv.run};
    }
    if (best.run >= 0) out.push_back(best);
    if (cmin == cmax) break;  // a single compute: one point
  }
  return out;
}

FitFrom parse_fit_from(std::string_view s) {
  if (s == "first-finish") return FitFrom::kFirstFinish;
  if (s == "all") return FitFrom::kAll;
  throw Error("--fit-from must be first-finish or all, got '" + std::string(s) + "'");
}

std::string fit_from_id(FitFrom f) { return f == FitFrom::kAll ? "all" : "first-finish"; }

double fit_start(std::span<const Curve> curves, FitFrom from) {
  if (from == FitFrom::kAll) return 0.0;
  double finished = INFINITY, any = INFINITY;
  for (const Curve& cv : curves) {
    if (cv.empty()) continue;
    any = std::min(any, cv.c.back());
    if (cv.finished) finished = std::min(finished, cv.c.back());
  }
  const double start = std::isfinite(finished) ? finished : any;
  return std::isfinite(start) ? start : 0.0;
}

}  // namespace moba::scaling
