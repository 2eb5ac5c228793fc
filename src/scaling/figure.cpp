// Figure contents from a Study: ranges, series, legend texts. No drawing here.
#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "scaling/plot.h"
#include "scaling/plot_axes.h"

namespace moba::scaling {

std::array<double, 3> attention_color(const std::string& a) {
  if (a == "moba") return {0.12, 0.38, 0.85};
  if (a == "full") return {0.85, 0.16, 0.14};
  return {0.15, 0.60, 0.25};
}

namespace {

bool all_synthetic(const Study& s) {
  return std::all_of(s.runs.begin(), s.runs.end(),
                     [](const Run& r) { return r.info.name.rfind("synthetic-", 0) == 0; });
}

// Points of `law` evenly spaced in log C over [lo, hi].
void sample_law(const PowerLaw& law, double lo, double hi, Series& out) {
  const int n = 64;
  for (int i = 0; i < n; ++i) {
    const double c = lo * std::pow(hi / lo, i / (n - 1.0));
    out.c.push_back(c);
    out.loss.push_back(law(c));
  }
}

}  // namespace

Figure make_figure(const Study& s, const Metric& m, Compute c, bool with_runs) {
  Figure fig;
  const std::string label = s.label(m);
  const std::string conv = compute_label(c);
  int64_t seq_len = 0;
  for (const Run& r : s.runs) seq_len = std::max(seq_len, r.info.seq_len);
  fig.title = label + (seq_len > 0 ? " (seq len " + positions_label(seq_len) + ")" : std::string()) +
              (with_runs ? ": every run and the projections" : ": frontier and projections") +
              ", " + conv;
  fig.x_label = "PFLOP/s-days (" + conv + ")";
  fig.y_label = label + " (nats/token)";

  double x_lo = INFINITY, x_hi = 0, y_lo = INFINITY, y_front_hi = 0, y_runs_hi = 0;
  std::vector<const FitResult*> fits;
  for (const std::string& a : s.attentions) {
    const FitResult* f = s.find(m, a, c);
    MOBA_CHECK(f, "no fit of ", label, " (", attention_label(a), ", ", compute_id(c),
               ") in this study");
    fits.push_back(f);
    for (const Curve& cv : f->curves) {
      x_lo = std::min(x_lo, cv.c.front());
      x_hi = std::max(x_hi, cv.c.back());
      for (double l : cv.loss) y_lo = std::min(y_lo, l), y_runs_hi = std::max(y_runs_hi, l);
    }
    for (const FrontierPoint& p : f->frontier) y_front_hi = std::max(y_front_hi, p.loss);
  }
  MOBA_CHECK(x_hi > 0 && x_hi > x_lo, "nothing to plot for ", label, " (", compute_id(c),
             "): the runs have fewer than two points of it");
  // A little air around the data, in log space.
  const double pad_x = std::pow(x_hi / x_lo, 0.03);
  fig.x_lo = x_lo / pad_x;
  fig.x_hi = x_hi * pad_x;
  // Early-training losses of the runs would squash the frontier: figure 2 shows up to a
  // quarter above the frontier's highest point and lets the curves enter from the top.
  const double y_hi = with_runs ? std::min(y_runs_hi, y_front_hi * 1.25) : y_front_hi;
  const double pad_y = std::pow(y_hi / y_lo, 0.05);
  fig.y_lo = y_lo / pad_y;
  fig.y_hi = y_hi * pad_y;

  if (with_runs)
    for (const FitResult* f : fits)
      for (size_t i = 0; i < f->curves.size(); ++i) {
        Series r;
        r.kind = Series::kRun;
        r.attention = f->attention;
        r.c = f->curves[i].c;
        r.loss = f->curves[i].loss;
        if (i == 0)
          r.legend = attention_label(f->attention) + " runs (" + std::to_string(f->curves.size()) + ")";
        fig.series.push_back(std::move(r));
      }
  if (!with_runs)
    for (const FitResult* f : fits) {
      Series fitted, other;
      fitted.kind = other.kind = Series::kFrontier;
      fitted.attention = other.attention = f->attention;
      other.hollow = true;
      for (const FrontierPoint& p : f->frontier) {
        Series& to = p.c >= f->fit_c_min * (1 - 1e-9) ? fitted : other;
        to.c.push_back(p.c);
        to.loss.push_back(p.loss);
      }
      fitted.legend = attention_label(f->attention) + " frontier";
      fig.series.push_back(std::move(other));
      fig.series.push_back(std::move(fitted));
    }
  for (const FitResult* f : fits) {
    if (!f->fit) continue;
    Series p;
    p.kind = Series::kProjection;
    p.attention = f->attention;
    sample_law(f->fit->law, fig.x_lo, fig.x_hi, p);
    p.legend = attention_label(f->attention) + " projection";
    char buf[64];
    if (f->fit->irreducible)
      std::snprintf(buf, sizeof buf, "%.3f + %.3f \u00d7 C", f->fit->law.E, f->fit->law.A);
    else
      std::snprintf(buf, sizeof buf, "%.3f \u00d7 C", f->fit->law.A);
    p.formula_base = buf;
    p.formula_exponent = signed_number(-f->fit->law.alpha, 3);
    fig.series.push_back(std::move(p));
  }
  fig.footnote = "Frontier: lower envelope of each attention type's runs";
  if (!with_runs && s.options.fit_from == FitFrom::kFirstFinish)
    fig.footnote += " (hollow: below the first finished run's compute, not fitted)";
  fig.footnote += ". Fit: least squares in log space. C = FLOPs / 8.64e19.";
  if (all_synthetic(s))
    fig.footnote = "SYNTHETIC RUNS: generated from a known law with noise, not measured.\n" + fig.footnote;
  return fig;
}

}  // namespace moba::scaling
