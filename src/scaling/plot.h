// The MoBA paper's two scaling figures, drawn from a Study with cairo as PNG and SVG.
#pragma once

#include <array>
#include <filesystem>
#include <string>
#include <vector>

#include "scaling/study.h"

namespace moba::scaling {

// False when this build has no cairo: write_figures then throws.
bool plotting_available();

// What one figure shows, made from a Study without any drawing (testable anywhere).
struct Series {
  enum Kind { kProjection, kFrontier, kRun };
  Kind kind = kRun;
  std::string attention;
  std::vector<double> c, loss;  // kProjection: two or more points of the fitted law
  bool hollow = false;          // kFrontier: points outside the fitted range
  std::string legend;           // text before the formula ("MoBA projection"); empty: none
  std::string formula_base, formula_exponent;  // "2.625 × C", "−0.063"
};

struct Figure {
  std::string title, x_label, y_label;
  double x_lo = 0, x_hi = 0, y_lo = 0, y_hi = 0;  // axis ranges (log axes)
  std::vector<Series> series;                     // drawn in order
  std::string footnote;                           // bottom-left, small
};

// Figure 1 (with_runs = false): each attention type's frontier points and its fitted
// projection, dashed (MoBA blue, full red). Figure 2 (with_runs = true): every run's curve
// as a solid line under the same dashed projections.
Figure make_figure(const Study& s, const Metric& m, Compute c, bool with_runs);

// Writes both figures as PNG and SVG into dir (created): <slug>_<compute>_frontier.* and
// <slug>_<compute>_runs.*, e.g. lm_6nd_frontier.png. The 900 x 600 point canvas is
// rendered at png_scale pixels per point in the PNG. Returns the paths written.
std::vector<std::filesystem::path> write_figures(const Study& s, const Metric& m, Compute c,
                                                 const std::filesystem::path& dir,
                                                 double png_scale = 2.0);

// The colour of an attention type: MoBA blue, full red, hybrid green (RGB in [0, 1]).
std::array<double, 3> attention_color(const std::string& attention);

}  // namespace moba::scaling
