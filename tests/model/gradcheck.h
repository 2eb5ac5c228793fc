// Central finite differences in double, shared by the model's gradient tests.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

namespace moba::model::testing {

// d f / d x[i] for every i, by central differences of step h.
inline std::vector<double> numeric_grad(const std::function<double()>& f, std::vector<double>& x,
                                        double h = 1e-6) {
  std::vector<double> g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double up = f();
    x[i] = x0 - h;
    const double down = f();
    x[i] = x0;
    g[i] = (up - down) / (2 * h);
  }
  return g;
}

// Analytic against numeric: |a - n| <= atol + rtol * max|n| for every element.
inline void expect_close(const std::string& what, const std::vector<double>& analytic,
                         const std::vector<double>& numeric, double rtol = 1e-6,
                         double atol = 1e-8) {
  ASSERT_EQ(analytic.size(), numeric.size()) << what;
  double scale = 0.0;
  for (double n : numeric) scale = std::max(scale, std::abs(n));
  ASSERT_GT(scale, 0.0) << what << ": the numeric gradient is all zeros, the test proves nothing";
  for (size_t i = 0; i < analytic.size(); ++i)
    ASSERT_NEAR(analytic[i], numeric[i], atol + rtol * scale) << what << " element " << i;
}

inline double weighted_sum(const std::vector<double>& y, const std::vector<double>& w) {
  double s = 0.0;
  for (size_t i = 0; i < y.size(); ++i) s += y[i] * w[i];
  return s;
}

}  // namespace moba::model::testing
