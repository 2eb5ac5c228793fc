// Drawing of a Figure with cairo: one routine, drawn once on an image surface (PNG) and
// once on an SVG surface. Sizes are in points of a 900 x 600 canvas; the PNG is rendered
// at twice that for sharp text.
#include <cairo.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "scaling/plot.h"
#include "scaling/plot_axes.h"
#include "scaling/plot_cairo.h"

namespace moba::scaling {

bool plotting_available() { return true; }

namespace {

namespace fs = std::filesystem;

constexpr double kW = 900, kH = 600;
constexpr double kLeft = 92, kRight = 24, kTop = 52, kBottom = 92;
using canvas::advance;
using canvas::font;
using canvas::show_sup;
using canvas::sup_width;

struct Frame {
  double x0 = kLeft, y0 = kTop, w = kW - kLeft - kRight, h = kH - kTop - kBottom;
  double lx0, lx1, ly0, ly1;  // log10 of the axis ranges
  explicit Frame(const Figure& f)
      : lx0(std::log10(f.x_lo)), lx1(std::log10(f.x_hi)), ly0(std::log10(f.y_lo)),
        ly1(std::log10(f.y_hi)) {}
  double px(double c) const { return x0 + (std::log10(c) - lx0) / (lx1 - lx0) * w; }
  double py(double l) const { return y0 + h - (std::log10(l) - ly0) / (ly1 - ly0) * h; }
};

void set_rgb(cairo_t* cr, const std::array<double, 3>& c, double alpha = 1.0) {
  cairo_set_source_rgba(cr, c[0], c[1], c[2], alpha);
}

void draw_axes(cairo_t* cr, const Figure& fig, const Frame& fr) {
  // Grid, frame and outward ticks, as the learning-rate figure's panels have them.
  canvas::draw_axes(cr, {.x0 = fr.x0,
                         .y0 = fr.y0,
                         .w = fr.w,
                         .h = fr.h,
                         .x_ticks = log_ticks(fig.x_lo, fig.x_hi),
                         .y_ticks = log_ticks(fig.y_lo, fig.y_hi),
                         .px = [&fr](double c) { return fr.px(c); },
                         .py = [&fr](double l) { return fr.py(l); }});
  // Axis labels and title.
  font(cr, 14);
  double w = advance(cr, fig.x_label);
  cairo_move_to(cr, fr.x0 + (fr.w - w) / 2, fr.y0 + fr.h + 50);
  cairo_show_text(cr, fig.x_label.c_str());
  w = advance(cr, fig.y_label);
  cairo_save(cr);
  cairo_move_to(cr, 26, fr.y0 + (fr.h + w) / 2);
  cairo_rotate(cr, -M_PI / 2);
  cairo_show_text(cr, fig.y_label.c_str());
  cairo_restore(cr);
  font(cr, 15, true);
  w = advance(cr, fig.title);
  cairo_move_to(cr, std::max(8.0, (kW - w) / 2), 30);
  cairo_show_text(cr, fig.title.c_str());
  if (!fig.footnote.empty()) {
    font(cr, 9.5);
    cairo_set_source_rgb(cr, 0.35, 0.35, 0.35);
    // One line per '\n', the last at the bottom edge.
    std::vector<std::string> lines;
    for (size_t a = 0, b; a <= fig.footnote.size(); a = b + 1) {
      b = fig.footnote.find('\n', a);
      if (b == std::string::npos) b = fig.footnote.size();
      lines.push_back(fig.footnote.substr(a, b - a));
    }
    for (size_t i = 0; i < lines.size(); ++i) {
      cairo_move_to(cr, 10, kH - 8 - 12.0 * (lines.size() - 1 - i));
      cairo_show_text(cr, lines[i].c_str());
    }
  }
}

void stroke_style(cairo_t* cr, const Series& s) {
  const auto color = attention_color(s.attention);
  if (s.kind == Series::kProjection) {
    const double dash[] = {9.0, 5.0};
    cairo_set_dash(cr, dash, 2, 0);
    cairo_set_line_width(cr, 2.6);
    set_rgb(cr, color);
  } else {
    cairo_set_dash(cr, nullptr, 0, 0);
    cairo_set_line_width(cr, 1.4);
    set_rgb(cr, color, 0.55);
  }
}

void draw_marker(cairo_t* cr, const Series& s, double x, double y) {
  cairo_set_dash(cr, nullptr, 0, 0);
  cairo_new_sub_path(cr);
  cairo_arc(cr, x, y, 3.2, 0, 2 * M_PI);
  if (s.hollow) {
    cairo_set_source_rgb(cr, 1, 1, 1);
    cairo_fill_preserve(cr);
    set_rgb(cr, attention_color(s.attention), 0.85);
    cairo_set_line_width(cr, 1.2);
  } else {
    set_rgb(cr, attention_color(s.attention), 0.85);
    cairo_fill_preserve(cr);
    cairo_set_line_width(cr, 0.8);
    cairo_set_source_rgb(cr, 1, 1, 1);
  }
  cairo_stroke(cr);
}

void draw_series(cairo_t* cr, const Figure& fig, const Frame& fr) {
  cairo_save(cr);
  cairo_rectangle(cr, fr.x0, fr.y0, fr.w, fr.h);
  cairo_clip(cr);
  cairo_set_line_join(cr, CAIRO_LINE_JOIN_ROUND);
  for (const Series& s : fig.series) {
    if (s.kind == Series::kFrontier) {
      for (size_t i = 0; i < s.c.size(); ++i) draw_marker(cr, s, fr.px(s.c[i]), fr.py(s.loss[i]));
      continue;
    }
    stroke_style(cr, s);
    for (size_t i = 0; i < s.c.size(); ++i)
      (i == 0 ? cairo_move_to : cairo_line_to)(cr, fr.px(s.c[i]), fr.py(s.loss[i]));
    cairo_stroke(cr);
  }
  cairo_restore(cr);
}

// The legend goes into the corner of the plot area that covers the fewest data points
// (for falling curves, usually the lower left, which the frontier leaves empty).
void draw_legend(cairo_t* cr, const Figure& fig, const Frame& fr) {
  std::vector<const Series*> entries;
  for (const Series& s : fig.series)
    if (!s.legend.empty()) entries.push_back(&s);
  if (entries.empty()) return;
  const double size = 13, row = 22, sample = 34, pad = 10;
  double text_w = 0;
  for (const Series* s : entries) {
    const std::string base = s->legend + (s->formula_base.empty() ? "" : ":  " + s->formula_base);
    text_w = std::max(text_w, sup_width(cr, size, base, s->formula_exponent));
  }
  const double bw = pad * 2 + sample + 8 + text_w, bh = pad * 2 + row * entries.size() - 6;
  const double m = 10;
  const double corners[4][2] = {{fr.x0 + m, fr.y0 + fr.h - m - bh},
                                {fr.x0 + fr.w - m - bw, fr.y0 + m},
                                {fr.x0 + fr.w - m - bw, fr.y0 + fr.h - m - bh},
                                {fr.x0 + m, fr.y0 + m}};
  int best = 0;
  size_t best_count = SIZE_MAX;
  for (int k = 0; k < 4; ++k) {
    size_t count = 0;
    for (const Series& s : fig.series)
      for (size_t i = 0; i < s.c.size(); ++i) {
        const double x = fr.px(s.c[i]), y = fr.py(s.loss[i]);
        count += x >= corners[k][0] && x <= corners[k][0] + bw && y >= corners[k][1] &&
                 y <= corners[k][1] + bh;
      }
    if (count < best_count) best = k, best_count = count;
  }
  const double bx = corners[best][0], by = corners[best][1];
  cairo_set_dash(cr, nullptr, 0, 0);
  cairo_rectangle(cr, bx, by, bw, bh);
  cairo_set_source_rgba(cr, 1, 1, 1, 0.92);
  cairo_fill_preserve(cr);
  cairo_set_source_rgb(cr, 0.7, 0.7, 0.7);
  cairo_set_line_width(cr, 0.8);
  cairo_stroke(cr);
  for (size_t i = 0; i < entries.size(); ++i) {
    const Series& s = *entries[i];
    const double y = by + pad + row * i + 8;
    const double x = bx + pad;
    if (s.kind == Series::kFrontier) {
      for (double dx : {6.0, 17.0, 28.0}) draw_marker(cr, s, x + dx, y);
    } else {
      stroke_style(cr, s);
      cairo_move_to(cr, x, y);
      cairo_line_to(cr, x + sample, y);
      cairo_stroke(cr);
    }
    cairo_set_source_rgb(cr, 0, 0, 0);
    const std::string base = s.legend + (s.formula_base.empty() ? "" : ":  " + s.formula_base);
    show_sup(cr, x + sample + 8, y + size * 0.36, size, base, s.formula_exponent);
  }
  cairo_set_dash(cr, nullptr, 0, 0);
}

void draw(cairo_t* cr, const Figure& fig) {
  cairo_set_source_rgb(cr, 1, 1, 1);
  cairo_paint(cr);
  const Frame fr(fig);
  draw_axes(cr, fig, fr);
  draw_series(cr, fig, fr);
  draw_legend(cr, fig, fr);
}

}  // namespace

std::vector<fs::path> write_figures(const Study& s, const Metric& m, Compute c, const fs::path& dir,
                                    double png_scale) {
  fs::create_directories(dir);
  std::vector<fs::path> out;
  for (bool with_runs : {false, true}) {
    const Figure fig = make_figure(s, m, c, with_runs);
    const std::string stem = m.slug() + "_" + compute_id(c) + (with_runs ? "_runs" : "_frontier");
    const canvas::Paint paint = [&fig](cairo_t* cr) { draw(cr, fig); };
    out.push_back(dir / (stem + ".png"));
    canvas::write_png(paint, kW, kH, out.back(), png_scale);
    out.push_back(dir / (stem + ".svg"));
    canvas::write_svg(paint, kW, kH, out.back());
  }
  return out;
}

}  // namespace moba::scaling
