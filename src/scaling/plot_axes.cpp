#include "scaling/plot_axes.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace moba::scaling {

std::string signed_number(double x, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, std::fabs(x));
  // A value that rounds to zero gets no sign.
  const bool negative = x < 0 && std::strtod(buf, nullptr) != 0.0;
  return (negative ? "\u2212" : "") + std::string(buf);
}

namespace {

std::string plain(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

// Decimals needed to print multiples of step exactly (step = m x 10^k, m in {1,2,2.5,5}).
int decimals_for(double step) {
  int d = 0;
  while (d < 8 && std::fabs(step * std::pow(10.0, d) - std::round(step * std::pow(10.0, d))) > 1e-9)
    ++d;
  return d;
}

}  // namespace

std::vector<Tick> log_ticks(double lo, double hi) {
  std::vector<Tick> ticks;
  if (!(lo > 0) || !(hi > lo)) return ticks;
  const double decades = std::log10(hi / lo);
  const double eps = 1e-9;
  if (decades > 1.3) {
    const int k0 = static_cast<int>(std::floor(std::log10(lo))) ;
    const int k1 = static_cast<int>(std::ceil(std::log10(hi)));
    const bool label_25 = decades < 3.0;
    for (int k = k0; k <= k1; ++k)
      for (int m = 1; m <= 9; ++m) {
        const double v = m * std::pow(10.0, k);
        if (v < lo * (1 - eps) || v > hi * (1 + eps)) continue;
        Tick t;
        t.value = v;
        t.major = m == 1 || (label_25 && (m == 2 || m == 5));
        if (t.major) {
          t.base = m == 1 ? "10" : std::to_string(m) + "\u00d710";
          t.exponent = signed_number(k, 0);
        }
        ticks.push_back(t);
      }
    return ticks;
  }
  // Narrow span: nice linear steps, most labels first.
  const double span = hi - lo;
  double step = 0;
  for (int k = static_cast<int>(std::floor(std::log10(span))) - 2; step == 0; ++k)
    for (double m : {1.0, 2.0, 2.5, 5.0}) {
      const double s = m * std::pow(10.0, k);
      if (span / s <= 7.0) {
        step = s;
        break;
      }
    }
  const int d = decimals_for(step);
  // Minor ticks at a fifth (or for 2.5, a fifth) of the step.
  const double minor = step / 5;
  for (long i = std::lround(std::ceil(lo / minor - eps)); i * minor <= hi * (1 + eps); ++i) {
    const double v = i * minor;
    Tick t;
    t.value = v;
    const double q = v / step;
    t.major = std::fabs(q - std::round(q)) < 1e-6;
    if (t.major) t.base = plain(std::round(q) * step, d);
    ticks.push_back(t);
  }
  // Linear steps crowd toward the top of a log axis (0.0030, 0.0035, 0.0040 on an axis from
  // 0.0009): from the top down, a label closer than a tenth of the span (in log) to the last
  // one kept becomes a minor tick.
  double kept = 0;
  for (auto it = ticks.rbegin(); it != ticks.rend(); ++it) {
    if (!it->major) continue;
    if (kept > 0 && std::log10(kept / it->value) < decades / 10) {
      it->major = false;
      it->base.clear();
    } else {
      kept = it->value;
    }
  }
  return ticks;
}

}  // namespace moba::scaling
