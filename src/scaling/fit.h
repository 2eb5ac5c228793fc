// Power-law fits of a frontier, L = A * C^(-alpha) or L = E + A * C^(-alpha), and their
// bootstrap intervals over runs.
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "scaling/frontier.h"

namespace moba::scaling {

struct PowerLaw {
  double A = 0, alpha = 0;
  double E = 0;  // irreducible loss; 0 for the pure power law
  double operator()(double c) const { return E + A * std::pow(c, -alpha); }
};

struct FitStats {
  PowerLaw law;
  bool irreducible = false;
  int points = 0;
  double rms_log_residual = 0;  // sqrt(mean (log L - log fit)^2): relative error of the fit
  bool converged = true;        // the nonlinear solver's verdict (always true for the linear fit)
};

// Pure power law: linear least squares of log L = log A - alpha log C (Eigen's
// column-pivoting QR). Needs >= 2 points with distinct compute.
FitStats fit_power_law(std::span<const double> c, std::span<const double> loss);

// With an irreducible term: minimises sum (log L - log(E + A C^-alpha))^2 over
// (E, log A, alpha) by Levenberg-Marquardt (Eigen unsupported), E kept in [0, min L).
// Started from the best of a scan over E of pure power-law fits to L - E. Needs >= 3 points.
FitStats fit_power_law_irreducible(std::span<const double> c, std::span<const double> loss);

// Fits the frontier points with compute >= c_min (a relative 1e-9 of slack, so that a
// point at exactly c_min counts).
FitStats fit_frontier(std::span<const FrontierPoint> frontier, bool irreducible, double c_min = 0);

struct Interval {
  double lo = 0, hi = 0;
  bool contains(double x) const { return lo <= x && x <= hi; }
};

// Percentile bootstrap over runs: `replicas` times, draw as many curves as there are,
// with replacement, rebuild the envelope and refit (the fit range by `from` recomputed
// on the drawn curves); the 2.5% and 97.5% quantiles of each
// parameter. Replicas whose envelope cannot be fitted are not counted.
struct Bootstrap {
  int replicas = 0, replicas_ok = 0;
  Interval A, alpha, E;
  std::vector<PowerLaw> laws;  // (replicas_ok) the fitted law of each replica that fitted
};
Bootstrap bootstrap_over_runs(std::span<const Curve> curves, bool irreducible, int replicas,
                              uint64_t seed, int points_per_decade, FitFrom from);

// MoBA's fit against full attention's: the differences the study's verdict rests on, each
// with a 95% interval from the two bootstraps (independent resamples of each type's runs,
// replica i of one paired with replica i of the other).
struct FitComparison {
  double alpha_diff = 0;        // alpha(MoBA) - alpha(full)
  Interval alpha_diff_ci;
  double A_ratio = 0;           // A(MoBA) / A(full)
  Interval A_ratio_ci;
  double c_star = 0;            // the stated compute
  double loss_ratio = 0;        // L_MoBA(c_star) / L_full(c_star)
  Interval loss_ratio_ci;
  int replicas = 0;             // pairs of replicas used
};
// nullopt when either bootstrap has no replica.
std::optional<FitComparison> compare_fits(const PowerLaw& moba, const Bootstrap& moba_boot,
                                          const PowerLaw& full, const Bootstrap& full_boot,
                                          double c_star);

// Quantile q in [0, 1] of xs by linear interpolation between order statistics.
double quantile(std::vector<double> xs, double q);

}  // namespace moba::scaling
