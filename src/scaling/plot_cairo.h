// The cairo helpers every figure of moba draws with (the scaling figures, plot.cpp and
// lr_plot.cpp, and the passkey heatmap, infer/passkey_plot.cpp): fonts, text widths, a
// panel's frame, grid and ticks, and the writing of one drawing routine as a PNG and as an
// SVG. Builds with cairo only.
#pragma once

#include <cairo.h>

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "scaling/plot_axes.h"

namespace moba::scaling::canvas {

inline constexpr const char* kFont = "DejaVu Sans";

// Selects kFont at `size` points, bold or not.
void font(cairo_t* cr, double size, bool bold = false);
// The horizontal advance of `s` in the current font.
double advance(cairo_t* cr, const std::string& s);
// Width of `base` followed by a raised exponent `exp` at 70% of `size`, and its drawing
// with the baseline at y from x (an axis label "10" + "−3"; exp may be empty).
double sup_width(cairo_t* cr, double size, const std::string& base, const std::string& exp);
void show_sup(cairo_t* cr, double x, double y, double size, const std::string& base,
              const std::string& exp);

using Paint = std::function<void(cairo_t*)>;

// A plot panel's axes: its frame (top left x0, y0; w x h points), the ticks of each axis
// and where a value lands on it (px, py: data value to points), and how the labels sit.
struct Axes {
  double x0 = 0, y0 = 0, w = 0, h = 0;
  std::vector<Tick> x_ticks, y_ticks;
  std::function<double(double)> px, py;
  double label_size = 13;    // tick labels, points
  double x_label_drop = 24;  // from the frame's bottom edge to the x labels' baseline
  bool minor_y = true;       // short unlabelled ticks on the y axis as on the x axis
};
// Light grid lines at the labelled ticks, then `backdrop` (a fill that hides the grid where
// it lies, such as the learning-rate figure's diverged band), then the frame with outward
// ticks and their labels, in black.
void draw_axes(cairo_t* cr, const Axes& a, const Paint& backdrop = {});
// `paint` on a width x height point canvas, rendered at `scale` pixels per point (in
// (0, 8]) into a PNG, or as an SVG. moba::Error naming the file when cairo cannot write it.
void write_png(const Paint& paint, double width, double height, const std::filesystem::path& file,
               double scale);
void write_svg(const Paint& paint, double width, double height, const std::filesystem::path& file);

}  // namespace moba::scaling::canvas
