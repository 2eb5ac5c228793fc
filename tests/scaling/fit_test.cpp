// The envelope and the fits on hand-made inputs with known answers, and on noisy
// synthetic power laws (fixed seeds).
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "scaling/fit.h"
#include "scaling/frontier.h"
#include "scaling/temp_dir.h"

namespace moba::scaling {
namespace {

using testing::expect_error;

Curve curve(int run, std::vector<double> c, std::vector<double> l, bool finished = true) {
  Curve cv;
  cv.run = run;
  cv.c = std::move(c);
  cv.loss = std::move(l);
  cv.finished = finished;
  return cv;
}

TEST(Envelope, InterpolatesInLogLogSpace) {
  const Curve cv = curve(0, {1, 100}, {4, 1});
  EXPECT_DOUBLE_EQ(interpolate_loglog(cv, 1), 4);
  EXPECT_DOUBLE_EQ(interpolate_loglog(cv, 100), 1);
  EXPECT_NEAR(interpolate_loglog(cv, 10), 2, 1e-12);  // halfway in log C: geometric mean
  EXPECT_TRUE(std::isnan(interpolate_loglog(cv, 0.5)));  // no extrapolation
  EXPECT_TRUE(std::isnan(interpolate_loglog(cv, 101)));
}

TEST(Envelope, MinimumOverCoveringRunsOnALogGrid) {
  // a: (1, 4) to (10, 2); b: (2, 3) to (100, 1). One point per decade: C = 1, 10, 100.
  const std::vector<Curve> curves = {curve(0, {1, 10}, {4, 2}), curve(1, {2, 100}, {3, 1})};
  const auto env = lower_envelope(curves, 1);
  ASSERT_EQ(env.size(), 3u);
  EXPECT_DOUBLE_EQ(env[0].c, 1);
  EXPECT_DOUBLE_EQ(env[0].loss, 4);  // only a covers C = 1
  EXPECT_EQ(env[0].run, 0);
  // At C = 10 a gives 2, b gives 3^(1 - log 5 / log 50) = 1.909...: b is lower.
  const double b10 = std::exp(std::log(3.0) * (1 - std::log(5.0) / std::log(50.0)));
  EXPECT_NEAR(env[1].c, 10, 1e-9);
  EXPECT_NEAR(env[1].loss, b10, 1e-12);
  EXPECT_EQ(env[1].run, 1);
  EXPECT_DOUBLE_EQ(env[2].c, 100);
  EXPECT_DOUBLE_EQ(env[2].loss, 1);
  // Finer grid: ceil(4 x 2) + 1 = 9 points, the ends pinned.
  const auto fine = lower_envelope(curves, 4);
  ASSERT_EQ(fine.size(), 9u);
  EXPECT_NEAR(fine[1].c, std::pow(10.0, 0.25), 1e-12);
  EXPECT_NEAR(fine[1].loss, interpolate_loglog(curves[0], std::pow(10.0, 0.25)), 1e-12);
}

TEST(Envelope, GapsAndEdgeCases) {
  // Two runs with a gap between their ranges: grid points in the gap are left out.
  const std::vector<Curve> gap = {curve(0, {1, 2}, {3, 2.5}), curve(1, {50, 100}, {1.5, 1.2})};
  for (const FrontierPoint& p : lower_envelope(gap, 8))
    EXPECT_TRUE(p.c <= 2 || p.c >= 50) << p.c;
  EXPECT_TRUE(lower_envelope(std::vector<Curve>{}, 8).empty());
  EXPECT_EQ(lower_envelope(std::vector<Curve>{curve(0, {5}, {2})}, 8).size(), 1u);
  expect_error([] { lower_envelope(std::vector<Curve>{}, 0); }, "points per decade");
}

TEST(Envelope, FitStartsWhereTheFirstFinishedRunEnds) {
  const std::vector<Curve> curves = {curve(0, {1, 10}, {4, 2}), curve(1, {2, 100}, {3, 1}),
                                     curve(2, {0.5, 3}, {5, 4}, /*finished=*/false)};
  EXPECT_DOUBLE_EQ(fit_start(curves, FitFrom::kFirstFinish), 10);  // the running run is ignored
  EXPECT_DOUBLE_EQ(fit_start(curves, FitFrom::kAll), 0);
  EXPECT_EQ(parse_fit_from("all"), FitFrom::kAll);
  expect_error([] { parse_fit_from("start"); }, "first-finish or all");
}

TEST(Fit, ExactPowerLawIsRecoveredExactly) {
  std::vector<double> c, l;
  for (int i = 0; i < 10; ++i) {
    c.push_back(std::pow(10.0, -3 + 0.3 * i));
    l.push_back(2.625 * std::pow(c.back(), -0.063));
  }
  const FitStats f = fit_power_law(c, l);
  EXPECT_NEAR(f.law.A, 2.625, 1e-10);
  EXPECT_NEAR(f.law.alpha, 0.063, 1e-12);
  EXPECT_NEAR(f.rms_log_residual, 0, 1e-12);
  EXPECT_EQ(f.points, 10);
}

// The paper's four fits, from 40 noisy points over three decades: within 2%.
TEST(Fit, RecoversAAndAlphaWithin2PercentFromNoisyCurves) {
  const double laws[4][2] = {{2.625, 0.063}, {2.622, 0.063}, {1.546, 0.108}, {1.464, 0.097}};
  std::mt19937_64 gen(42);
  std::normal_distribution<double> noise(0.0, 0.005);
  for (const auto& [A, alpha] : laws) {
    std::vector<double> c, l;
    for (int i = 0; i < 40; ++i) {
      c.push_back(std::pow(10.0, -2 + 3.0 * i / 39));
      l.push_back(A * std::pow(c.back(), -alpha) * std::exp(noise(gen)));
    }
    const FitStats f = fit_power_law(c, l);
    EXPECT_NEAR(f.law.A / A, 1, 0.02) << A;
    EXPECT_NEAR(f.law.alpha / alpha, 1, 0.02) << alpha;
    EXPECT_LT(f.rms_log_residual, 0.007);
  }
}

TEST(Fit, IrreducibleTermIsRecovered) {
  std::mt19937_64 gen(7);
  std::normal_distribution<double> noise(0.0, 0.001);
  std::vector<double> c, l;
  for (int i = 0; i < 60; ++i) {
    c.push_back(std::pow(10.0, -3 + 5.0 * i / 59));
    l.push_back((1.2 + 3.0 * std::pow(c.back(), -0.2)) * std::exp(noise(gen)));
  }
  const FitStats f = fit_power_law_irreducible(c, l);
  EXPECT_TRUE(f.irreducible);
  EXPECT_TRUE(f.converged);
  EXPECT_NEAR(f.law.E / 1.2, 1, 0.03);
  EXPECT_NEAR(f.law.A / 3.0, 1, 0.03);
  EXPECT_NEAR(f.law.alpha / 0.2, 1, 0.03);
  // A pure power law needs E = 0: the fit must not invent one.
  std::vector<double> pure;
  for (double x : c) pure.push_back(2.0 * std::pow(x, -0.1));
  const FitStats p = fit_power_law_irreducible(c, pure);
  EXPECT_LT(p.law.E, 0.02);
  EXPECT_NEAR(p.law.alpha, 0.1, 0.002);
}

TEST(Fit, RejectsUnfittableInput) {
  expect_error([] { fit_power_law(std::vector<double>{1}, std::vector<double>{2}); },
               "at least 2 frontier points");
  expect_error([] { fit_power_law(std::vector<double>{1, 1}, std::vector<double>{2, 3}); },
               "same compute");
  expect_error([] { fit_power_law(std::vector<double>{1, 2}, std::vector<double>{2, -3}); },
               "not positive and finite");
  expect_error([] {
    fit_power_law_irreducible(std::vector<double>{1, 2}, std::vector<double>{2, 1.9});
  }, "at least 3");
}

TEST(Fit, FrontierFitUsesOnlyPointsFromCMin) {
  std::vector<FrontierPoint> pts;
  for (int i = 0; i < 10; ++i) {
    const double c = std::pow(10.0, i * 0.25);
    // The first three points are off the law: a fit from c_min must ignore them.
    pts.push_back({c, 3.0 * std::pow(c, -0.1) * (i < 3 ? 1.5 : 1.0), 0});
  }
  const FitStats f = fit_frontier(pts, false, pts[3].c);
  EXPECT_EQ(f.points, 7);
  EXPECT_NEAR(f.law.A, 3.0, 1e-9);
  EXPECT_NEAR(f.law.alpha, 0.1, 1e-12);
}

TEST(Fit, Quantiles) {
  EXPECT_DOUBLE_EQ(quantile({3, 1, 2}, 0.5), 2);
  EXPECT_DOUBLE_EQ(quantile({1, 2}, 0.25), 1.25);
  EXPECT_DOUBLE_EQ(quantile({5}, 0.975), 5);
}

// Runs lying on one law with noise: the bootstrap over runs brackets the truth.
TEST(Bootstrap, IntervalsContainTheTrueLaw) {
  std::mt19937_64 gen(3);
  std::normal_distribution<double> noise(0.0, 0.01);
  std::vector<Curve> curves;
  for (int r = 0; r < 8; ++r) {
    Curve cv = curve(r, {}, {});
    const double c0 = std::pow(10.0, -3 + 0.4 * r);  // overlapping ranges of 1.2 decades
    for (int i = 0; i < 20; ++i) {
      cv.c.push_back(c0 * std::pow(10.0, 1.2 * i / 19));
      cv.loss.push_back(2.0 * std::pow(cv.c.back(), -0.08) * std::exp(noise(gen)));
    }
    curves.push_back(cv);
  }
  const Bootstrap b = bootstrap_over_runs(curves, false, 400, 1, 16, FitFrom::kAll);
  EXPECT_EQ(b.replicas, 400);
  EXPECT_EQ(b.replicas_ok, 400);
  EXPECT_TRUE(b.A.contains(2.0)) << b.A.lo << " " << b.A.hi;
  EXPECT_TRUE(b.alpha.contains(0.08)) << b.alpha.lo << " " << b.alpha.hi;
  EXPECT_LT(b.A.lo, b.A.hi);
  // Same seed, same intervals.
  const Bootstrap again = bootstrap_over_runs(curves, false, 400, 1, 16, FitFrom::kAll);
  EXPECT_EQ(again.A.lo, b.A.lo);
  EXPECT_EQ(again.alpha.hi, b.alpha.hi);
  EXPECT_EQ(bootstrap_over_runs(curves, false, 0, 1, 16, FitFrom::kAll).replicas_ok, 0);
}

}  // namespace
}  // namespace moba::scaling

namespace moba::scaling {
namespace {

TEST(CompareFits, DifferencesAndIntervalsFromReplicaPairs) {
  const PowerLaw moba{2.0, 0.10}, full{2.5, 0.08};
  Bootstrap bm, bf;
  for (int i = 0; i < 101; ++i) {
    bm.laws.push_back({2.0, 0.10 + 0.0002 * (i - 50)});  // alpha 0.09 .. 0.11
    bf.laws.push_back({2.5, 0.08});
  }
  const auto c = compare_fits(moba, bm, full, bf, 1e-3);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->replicas, 101);
  EXPECT_NEAR(c->alpha_diff, 0.02, 1e-12);
  EXPECT_NEAR(c->alpha_diff_ci.lo, 0.02 - 0.0002 * 47.5, 1e-9);  // 2.5% of 100 gaps
  EXPECT_NEAR(c->alpha_diff_ci.hi, 0.02 + 0.0002 * 47.5, 1e-9);
  EXPECT_NEAR(c->A_ratio, 0.8, 1e-12);
  EXPECT_NEAR(c->A_ratio_ci.lo, 0.8, 1e-12);
  EXPECT_NEAR(c->loss_ratio, moba(1e-3) / full(1e-3), 1e-12);
  EXPECT_LT(c->loss_ratio_ci.lo, c->loss_ratio);
  EXPECT_GT(c->loss_ratio_ci.hi, c->loss_ratio);
  EXPECT_FALSE(compare_fits(moba, Bootstrap{}, full, bf, 1e-3));
}

}  // namespace
}  // namespace moba::scaling
