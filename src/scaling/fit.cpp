#include "scaling/fit.h"

#include <algorithm>
#include <cmath>
#include <random>

#include <Eigen/Dense>
#include <unsupported/Eigen/LevenbergMarquardt>

#include "core/error.h"

namespace moba::scaling {
namespace {

double rms_log_residual(std::span<const double> c, std::span<const double> loss,
                        const PowerLaw& law) {
  double s = 0;
  for (size_t i = 0; i < c.size(); ++i) {
    const double r = std::log(loss[i]) - std::log(law(c[i]));
    s += r * r;
  }
  return c.empty() ? 0 : std::sqrt(s / c.size());
}

void check_points(std::span<const double> c, std::span<const double> loss, size_t need) {
  MOBA_CHECK(c.size() == loss.size(), "fit: ", c.size(), " computes but ", loss.size(), " losses");
  MOBA_CHECK(c.size() >= need, "fit: need at least ", need, " frontier points, got ", c.size());
  for (size_t i = 0; i < c.size(); ++i)
    MOBA_CHECK(c[i] > 0 && loss[i] > 0 && std::isfinite(c[i]) && std::isfinite(loss[i]),
               "fit: point ", i, " (C=", c[i], ", L=", loss[i], ") is not positive and finite");
  const auto [lo, hi] = std::minmax_element(c.begin(), c.end());
  MOBA_CHECK(*hi > *lo, "fit: all frontier points have the same compute ", *lo);
}

// log L - log E = log A - alpha log C for a given E (loss > E): the linear solve.
PowerLaw linear_fit(std::span<const double> c, std::span<const double> loss, double E) {
  const Eigen::Index n = static_cast<Eigen::Index>(c.size());
  Eigen::MatrixXd X(n, 2);
  Eigen::VectorXd y(n);
  for (Eigen::Index i = 0; i < n; ++i) {
    X(i, 0) = 1.0;
    X(i, 1) = std::log(c[static_cast<size_t>(i)]);
    y(i) = std::log(loss[static_cast<size_t>(i)] - E);
  }
  const Eigen::Vector2d beta = X.colPivHouseholderQr().solve(y);
  return {std::exp(beta(0)), -beta(1), E};
}

// Residuals r_i = log(E + A C_i^-alpha) - log L_i in the parameters x = (E, log A, alpha).
// E is mapped into [0, Emax) smoothly (E = Emax * sigmoid(u)) so the model stays positive
// and below the smallest loss whatever step the solver takes.
struct IrreducibleFunctor : Eigen::DenseFunctor<double> {
  std::span<const double> c, loss;
  double e_max;
  IrreducibleFunctor(std::span<const double> c_, std::span<const double> loss_, double e_max_)
      : Eigen::DenseFunctor<double>(3, static_cast<int>(c_.size())), c(c_), loss(loss_),
        e_max(e_max_) {}
  static double sigmoid(double u) { return 1.0 / (1.0 + std::exp(-u)); }
  int operator()(const InputType& x, ValueType& f) const {
    const double E = e_max * sigmoid(x(0)), A = std::exp(x(1)), alpha = x(2);
    for (size_t i = 0; i < c.size(); ++i)
      f(static_cast<Eigen::Index>(i)) = std::log(E + A * std::pow(c[i], -alpha)) - std::log(loss[i]);
    return 0;
  }
  int df(const InputType& x, JacobianType& J) const {
    const double s = sigmoid(x(0)), E = e_max * s, A = std::exp(x(1)), alpha = x(2);
    for (size_t i = 0; i < c.size(); ++i) {
      const double p = A * std::pow(c[i], -alpha), m = E + p;
      const Eigen::Index r = static_cast<Eigen::Index>(i);
      J(r, 0) = e_max * s * (1 - s) / m;
      J(r, 1) = p / m;
      J(r, 2) = -std::log(c[i]) * p / m;
    }
    return 0;
  }
};

}  // namespace

FitStats fit_power_law(std::span<const double> c, std::span<const double> loss) {
  check_points(c, loss, 2);
  FitStats s;
  s.law = linear_fit(c, loss, 0.0);
  s.points = static_cast<int>(c.size());
  s.rms_log_residual = rms_log_residual(c, loss, s.law);
  return s;
}

FitStats fit_power_law_irreducible(std::span<const double> c, std::span<const double> loss) {
  check_points(c, loss, 3);
  const double lmin = *std::min_element(loss.begin(), loss.end());
  // Start: scan E over [0, 0.99 lmin) and keep the best linear fit of log(L - E).
  FitStats best;
  best.irreducible = true;
  best.points = static_cast<int>(c.size());
  best.rms_log_residual = INFINITY;
  for (int k = 0; k < 100; ++k) {
    const PowerLaw law = linear_fit(c, loss, 0.99 * lmin * k / 100.0);
    const double r = rms_log_residual(c, loss, law);
    if (r < best.rms_log_residual) best.law = law, best.rms_log_residual = r;
  }
  // Refine all three together.
  const double e_max = lmin;
  IrreducibleFunctor functor(c, loss, e_max);
  Eigen::VectorXd x(3);
  const double s0 = std::clamp(best.law.E / e_max, 1e-6, 1 - 1e-6);
  x << std::log(s0 / (1 - s0)), std::log(best.law.A), best.law.alpha;
  Eigen::LevenbergMarquardt<IrreducibleFunctor> lm(functor);
  lm.setMaxfev(2000);
  const Eigen::LevenbergMarquardtSpace::Status status = lm.minimize(x);
  const PowerLaw refined{std::exp(x(1)), x(2), e_max * IrreducibleFunctor::sigmoid(x(0))};
  const double r = rms_log_residual(c, loss, refined);
  if (std::isfinite(r) && r <= best.rms_log_residual) {
    best.law = refined;
    best.rms_log_residual = r;
  }
  best.converged = status != Eigen::LevenbergMarquardtSpace::ImproperInputParameters &&
                   status != Eigen::LevenbergMarquardtSpace::TooManyFunctionEvaluation;
  return best;
}

FitStats fit_frontier(std::span<const FrontierPoint> frontier, bool irreducible, double c_min) {
  std::vector<double> c, l;
  for (const FrontierPoint& p : frontier)
    if (p.c >= c_min * (1 - 1e-9)) c.push_back(p.c), l.push_back(p.loss);
  return irreducible ? fit_power_law_irreducible(c, l) : fit_power_law(c, l);
}

double quantile(std::vector<double> xs, double q) {
  MOBA_CHECK(!xs.empty(), "quantile of an empty sample");
  std::sort(xs.begin(), xs.end());
  const double pos = q * static_cast<double>(xs.size() - 1);
  const size_t i = static_cast<size_t>(std::floor(pos));
  if (i + 1 >= xs.size()) return xs.back();
  return xs[i] + (pos - static_cast<double>(i)) * (xs[i + 1] - xs[i]);
}

Bootstrap bootstrap_over_runs(std::span<const Curve> curves, bool irreducible, int replicas,
                              uint64_t seed, int points_per_decade, FitFrom from) {
  Bootstrap b;
  b.replicas = replicas;
  if (replicas <= 0 || curves.empty()) return b;
  std::mt19937_64 gen(seed);
  std::uniform_int_distribution<size_t> pick(0, curves.size() - 1);
  std::vector<double> As, alphas, Es;
  std::vector<Curve> sample(curves.size());
  for (int r = 0; r < replicas; ++r) {
    for (Curve& s : sample) s = curves[pick(gen)];
    const auto frontier = lower_envelope(sample, points_per_decade);
    try {
      const FitStats f = fit_frontier(frontier, irreducible, fit_start(sample, from));
      if (!std::isfinite(f.law.A) || !std::isfinite(f.law.alpha)) continue;
      As.push_back(f.law.A);
      alphas.push_back(f.law.alpha);
      Es.push_back(f.law.E);
      b.laws.push_back(f.law);
    } catch (const Error&) {
      // Too few frontier points in this replica (e.g. only a one-point curve drawn).
    }
  }
  b.replicas_ok = static_cast<int>(As.size());
  if (As.empty()) return b;
  b.A = {quantile(As, 0.025), quantile(As, 0.975)};
  b.alpha = {quantile(alphas, 0.025), quantile(alphas, 0.975)};
  b.E = {quantile(Es, 0.025), quantile(Es, 0.975)};
  return b;
}

std::optional<FitComparison> compare_fits(const PowerLaw& moba, const Bootstrap& moba_boot,
                                          const PowerLaw& full, const Bootstrap& full_boot,
                                          double c_star) {
  const size_t n = std::min(moba_boot.laws.size(), full_boot.laws.size());
  if (n == 0) return std::nullopt;
  FitComparison c;
  c.c_star = c_star;
  c.replicas = static_cast<int>(n);
  c.alpha_diff = moba.alpha - full.alpha;
  c.A_ratio = moba.A / full.A;
  c.loss_ratio = moba(c_star) / full(c_star);
  std::vector<double> da, ra, rl;
  for (size_t i = 0; i < n; ++i) {
    const PowerLaw &m = moba_boot.laws[i], &f = full_boot.laws[i];
    da.push_back(m.alpha - f.alpha);
    ra.push_back(m.A / f.A);
    rl.push_back(m(c_star) / f(c_star));
  }
  c.alpha_diff_ci = {quantile(da, 0.025), quantile(da, 0.975)};
  c.A_ratio_ci = {quantile(ra, 0.025), quantile(ra, 0.975)};
  c.loss_ratio_ci = {quantile(rl, 0.025), quantile(rl, 0.975)};
  return c;
}

}  // namespace moba::scaling
