// The passkey heatmap, drawn with cairo as the scaling figures are (scaling/plot_cairo.h):
// one column per context length, one row per depth (0 at the top: the needle at the start
// of the text), each cell coloured by its accuracy from red (0) through yellow to green
// (1), with the accuracy written in it, and a colour bar on the right.
#include <algorithm>
#include <cmath>
#include <filesystem>

#include "infer/passkey.h"
#include "scaling/plot_cairo.h"

namespace moba::infer {
namespace {

namespace canvas = scaling::canvas;

constexpr double kW = 900, kH = 600;
constexpr double kLeft = 96, kRight = 110, kTop = 56, kBottom = 72;

// Red - yellow - green, as the needle-in-a-haystack figures colour accuracy.
void accuracy_color(cairo_t* cr, double a) {
  const double lo[3] = {0.84, 0.19, 0.15}, mid[3] = {0.99, 0.87, 0.45}, hi[3] = {0.10, 0.60, 0.32};
  a = std::clamp(a, 0.0, 1.0);
  const double* p = a < 0.5 ? lo : mid;
  const double* q = a < 0.5 ? mid : hi;
  const double t = a < 0.5 ? a * 2 : (a - 0.5) * 2;
  cairo_set_source_rgb(cr, p[0] + (q[0] - p[0]) * t, p[1] + (q[1] - p[1]) * t,
                       p[2] + (q[2] - p[2]) * t);
}

std::string length_label(int64_t l) {
  if (l >= 1024 && l % 1024 == 0) return std::to_string(l / 1024) + "K";
  return std::to_string(l);
}

std::string percent(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.0f%%", 100.0 * x);
  return buf;
}

void centered(cairo_t* cr, double x, double y, const std::string& s) {
  cairo_move_to(cr, x - canvas::advance(cr, s) / 2, y);
  cairo_show_text(cr, s.c_str());
}

void draw(cairo_t* cr, const PasskeyTable& t, const std::string& title) {
  cairo_set_source_rgb(cr, 1, 1, 1);
  cairo_paint(cr);
  const size_t nl = t.lengths.size(), nd = t.depths.size();
  const double w = kW - kLeft - kRight, h = kH - kTop - kBottom;
  const double cw = w / static_cast<double>(nl), ch = h / static_cast<double>(nd);
  const double text = std::clamp(std::min(cw / 3.4, ch / 2.2), 7.0, 15.0);
  for (size_t d = 0; d < nd; ++d)
    for (size_t l = 0; l < nl; ++l) {
      const double x = kLeft + cw * static_cast<double>(l), y = kTop + ch * static_cast<double>(d);
      accuracy_color(cr, t.accuracy(d, l));
      cairo_rectangle(cr, x, y, cw, ch);
      cairo_fill_preserve(cr);
      cairo_set_source_rgb(cr, 1, 1, 1);
      cairo_set_line_width(cr, 1.0);
      cairo_stroke(cr);
      cairo_set_source_rgb(cr, 0.1, 0.1, 0.1);
      canvas::font(cr, text);
      centered(cr, x + cw / 2, y + ch / 2 + text * 0.36, percent(t.accuracy(d, l)));
    }
  // Axes: lengths under the columns, depths left of the rows.
  cairo_set_source_rgb(cr, 0, 0, 0);
  canvas::font(cr, 13);
  for (size_t l = 0; l < nl; ++l)
    centered(cr, kLeft + cw * (static_cast<double>(l) + 0.5), kTop + h + 20, length_label(t.lengths[l]));
  for (size_t d = 0; d < nd; ++d) {
    const std::string s = percent(t.depths[d]);
    cairo_move_to(cr, kLeft - 10 - canvas::advance(cr, s),
                  kTop + ch * (static_cast<double>(d) + 0.5) + 13 * 0.36);
    cairo_show_text(cr, s.c_str());
  }
  canvas::font(cr, 14);
  centered(cr, kLeft + w / 2, kTop + h + 48, "Context length (tokens)");
  const std::string ylabel = "Depth of the pass key in the text";
  cairo_save(cr);
  cairo_move_to(cr, 30, kTop + (h + canvas::advance(cr, ylabel)) / 2);
  cairo_rotate(cr, -M_PI / 2);
  cairo_show_text(cr, ylabel.c_str());
  cairo_restore(cr);
  canvas::font(cr, 15, true);
  cairo_move_to(cr, std::max(8.0, (kW - canvas::advance(cr, title)) / 2), 32);
  cairo_show_text(cr, title.c_str());
  canvas::font(cr, 10);
  cairo_set_source_rgb(cr, 0.35, 0.35, 0.35);
  const std::string note = std::to_string(t.trials) + " trial" + (t.trials == 1 ? "" : "s") +
                           " per cell; accuracy of the greedy continuation";
  cairo_move_to(cr, 10, kH - 8);
  cairo_show_text(cr, note.c_str());
  // Colour bar.
  const double bx = kW - kRight + 30, bw = 18;
  for (int i = 0; i < 100; ++i) {
    accuracy_color(cr, 1.0 - (i + 0.5) / 100.0);
    cairo_rectangle(cr, bx, kTop + h * i / 100.0, bw, h / 100.0 + 0.5);
    cairo_fill(cr);
  }
  cairo_set_source_rgb(cr, 0, 0, 0);
  cairo_set_line_width(cr, 0.8);
  cairo_rectangle(cr, bx, kTop, bw, h);
  cairo_stroke(cr);
  canvas::font(cr, 11);
  for (double a : {0.0, 0.25, 0.5, 0.75, 1.0}) {
    const double y = kTop + h * (1.0 - a);
    cairo_move_to(cr, bx + bw, y);
    cairo_line_to(cr, bx + bw + 4, y);
    cairo_stroke(cr);
    cairo_move_to(cr, bx + bw + 7, y + 4);
    cairo_show_text(cr, percent(a).c_str());
  }
}

}  // namespace

std::vector<std::string> write_passkey_figure(const PasskeyTable& table, const std::string& title,
                                              const std::string& dir) {
  std::filesystem::create_directories(dir);
  const canvas::Paint paint = [&](cairo_t* cr) { draw(cr, table, title); };
  const std::filesystem::path png = std::filesystem::path(dir) / "passkey.png",
                              svg = std::filesystem::path(dir) / "passkey.svg";
  canvas::write_png(paint, kW, kH, png, 2.0);
  canvas::write_svg(paint, kW, kH, svg);
  return {png.string(), svg.string()};
}

}  // namespace moba::infer
