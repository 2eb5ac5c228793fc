// The compute-optimal frontier: the lower envelope of several runs' loss-against-compute
// curves, sampled on a log-spaced compute grid.
#pragma once

#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "scaling/curves.h"

namespace moba::scaling {

// Loss of `curve` at compute c, interpolated linearly in (log C, log L) between its two
// neighbouring points; NaN outside [c.front(), c.back()] (no extrapolation).
double interpolate_loglog(const Curve& curve, double c);

struct FrontierPoint {
  double c = 0, loss = 0;  // PFLOP/s-days, loss
  int run = -1;            // Curve::run of the curve that attains the minimum
};

// The envelope: G = max(2, ceil(points_per_decade * log10(Cmax/Cmin)) + 1) computes
// spaced evenly in log C from Cmin to Cmax inclusive (the smallest and largest compute of
// any curve); at each, the minimum over the curves whose compute range covers it of their
// interpolated loss. A grid point no curve covers is left out. Evenly spaced in log C, the
// points weigh every decade of compute equally in the fit.
std::vector<FrontierPoint> lower_envelope(std::span<const Curve> curves,
                                          int points_per_decade = 16);

// Which part of the envelope the fit uses. Below the compute at which the first run
// finishes, the envelope is the smallest model early in its training: no smaller model
// was trained to compete there, so those points are not compute-optimal and bend the fit.
enum class FitFrom {
  kFirstFinish,  // C >= the smallest final compute of the finished curves (of all, if
                 // none finished): where every envelope point has a rival size
  kAll,          // the whole envelope
};
FitFrom parse_fit_from(std::string_view s);  // "first-finish" or "all"
std::string fit_from_id(FitFrom f);
// The smallest compute the fit uses under `from` (0 for kAll).
double fit_start(std::span<const Curve> curves, FitFrom from);

}  // namespace moba::scaling
