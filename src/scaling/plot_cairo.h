// The cairo helpers every figure of moba draws with (the scaling figures, plot.cpp, and the
// passkey heatmap, infer/passkey_plot.cpp): fonts, text widths, and the writing of one
// drawing routine as a PNG and as an SVG. Builds with cairo only.
#pragma once

#include <cairo.h>

#include <filesystem>
#include <functional>
#include <string>

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
// `paint` on a width x height point canvas, rendered at `scale` pixels per point (in
// (0, 8]) into a PNG, or as an SVG. moba::Error naming the file when cairo cannot write it.
void write_png(const Paint& paint, double width, double height, const std::filesystem::path& file,
               double scale);
void write_svg(const Paint& paint, double width, double height, const std::filesystem::path& file);

}  // namespace moba::scaling::canvas
