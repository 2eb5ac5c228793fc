// The learning-rate search's figure (lr_search.h): final validation loss against learning
// rate, one panel per size, drawn with cairo once as PNG and once as SVG. Colour: the
// attention (as in the scaling figures); line: solid tied, dashed untied embeddings;
// marker: the warm-up fraction. Runs that diverged or failed sit as crosses in a band at
// the top of their panel, at their learning rate, so that none disappears from the figure.
#include <cairo.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "core/error.h"
#include "scaling/lr_search.h"
#include "scaling/plot.h"
#include "scaling/plot_axes.h"
#include "scaling/plot_cairo.h"

namespace moba::scaling {
namespace {

namespace fs = std::filesystem;
using canvas::advance;
using canvas::font;

constexpr double kPanelW = 400, kPanelH = 380, kGap = 56;
constexpr double kLeft = 84, kTop = 70, kBottom = 96, kLegendW = 270;
constexpr double kBand = 22;  // the diverged band above each panel's loss range

struct Panel {
  double x0, y0, w = kPanelW, h = kPanelH;  // the frame; losses below y0 + kBand
  double lx0, lx1, y_lo, y_hi;              // log10 lr range, loss range
  double px(double lr) const { return x0 + (std::log10(lr) - lx0) / (lx1 - lx0) * w; }
  double py(double loss) const {
    return y0 + kBand + (h - kBand) * (1 - (loss - y_lo) / (y_hi - y_lo));
  }
};

void rgb(cairo_t* cr, const std::array<double, 3>& c, double alpha = 1) {
  cairo_set_source_rgba(cr, c[0], c[1], c[2], alpha);
}

void line_style(cairo_t* cr, int tied) {
  if (tied == 0) {
    const double dash[] = {7.0, 4.0};
    cairo_set_dash(cr, dash, 2, 0);
  } else {
    cairo_set_dash(cr, nullptr, 0, 0);
  }
  cairo_set_line_width(cr, 1.8);
}

// Marker k (by warm-up): circle, square, triangle, diamond, then again.
void marker(cairo_t* cr, int k, double x, double y, const std::array<double, 3>& c, bool hollow) {
  const double r = 4.0;
  cairo_set_dash(cr, nullptr, 0, 0);
  cairo_new_path(cr);
  switch (k % 4) {
    case 0:
      cairo_arc(cr, x, y, r, 0, 2 * M_PI);
      break;
    case 1:
      cairo_rectangle(cr, x - r * 0.85, y - r * 0.85, r * 1.7, r * 1.7);
      break;
    case 2:
      cairo_move_to(cr, x, y - r * 1.1);
      cairo_line_to(cr, x + r, y + r * 0.8);
      cairo_line_to(cr, x - r, y + r * 0.8);
      cairo_close_path(cr);
      break;
    default:
      cairo_move_to(cr, x, y - r * 1.2);
      cairo_line_to(cr, x + r, y);
      cairo_line_to(cr, x, y + r * 1.2);
      cairo_line_to(cr, x - r, y);
      cairo_close_path(cr);
  }
  if (hollow) {
    cairo_set_source_rgb(cr, 1, 1, 1);
    cairo_fill_preserve(cr);
    rgb(cr, c);
  } else {
    rgb(cr, c);
    cairo_fill_preserve(cr);
    cairo_set_source_rgb(cr, 1, 1, 1);
  }
  cairo_set_line_width(cr, 1.0);
  cairo_stroke(cr);
}

void cross(cairo_t* cr, double x, double y, const std::array<double, 3>& c) {
  cairo_set_dash(cr, nullptr, 0, 0);
  rgb(cr, c);
  cairo_set_line_width(cr, 1.8);
  const double r = 4.5;
  cairo_move_to(cr, x - r, y - r);
  cairo_line_to(cr, x + r, y + r);
  cairo_move_to(cr, x - r, y + r);
  cairo_line_to(cr, x + r, y - r);
  cairo_stroke(cr);
}

void ring(cairo_t* cr, double x, double y) {
  cairo_set_dash(cr, nullptr, 0, 0);
  cairo_set_source_rgb(cr, 0, 0, 0);
  cairo_set_line_width(cr, 1.4);
  cairo_new_path(cr);
  cairo_arc(cr, x, y, 8.0, 0, 2 * M_PI);
  cairo_stroke(cr);
}

void centered(cairo_t* cr, double x, double y, const std::string& s) {
  cairo_move_to(cr, x - advance(cr, s) / 2, y);
  cairo_show_text(cr, s.c_str());
}

std::string si(double x) {
  const char* unit[] = {"", "k", "M", "B", "T"};
  int u = 0;
  while (std::fabs(x) >= 1000.0 && u < 4) x /= 1000.0, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f%s" : (x < 10 ? "%.2f%s" : "%.1f%s"), x, unit[u]);
  return buf;
}

struct Layout {
  std::vector<int64_t> sizes;           // params_non_embedding, ascending
  std::map<std::string, int> warmups;   // "%g" of the fraction -> marker
  double width = 0, height = kTop + kPanelH + kBottom;
};

Layout layout_of(const LrSearch& s) {
  Layout l;
  for (const LrCurve& cv : s.curves) {
    if (std::find(l.sizes.begin(), l.sizes.end(), cv.params_non_embedding) == l.sizes.end())
      l.sizes.push_back(cv.params_non_embedding);
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", cv.warmup_fraction);
    l.warmups.emplace(buf, static_cast<int>(l.warmups.size()));
  }
  std::sort(l.sizes.begin(), l.sizes.end());
  const double n = static_cast<double>(l.sizes.size());
  l.width = kLeft + n * kPanelW + (n - 1) * kGap + 24 + kLegendW;
  return l;
}

int marker_of(const Layout& l, const LrCurve& cv) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", cv.warmup_fraction);
  return l.warmups.at(buf);
}

void draw_panel(cairo_t* cr, const LrSearch& s, const Layout& lay, size_t index) {
  const int64_t size = lay.sizes[index];
  std::vector<const LrCurve*> curves;
  for (const LrCurve& cv : s.curves)
    if (cv.params_non_embedding == size) curves.push_back(&cv);
  Panel p{};
  p.x0 = kLeft + static_cast<double>(index) * (kPanelW + kGap);
  p.y0 = kTop;
  double lr_lo = INFINITY, lr_hi = 0, lo = INFINITY, hi = -INFINITY;
  for (const LrCurve* cv : curves) {
    for (const LrPoint& pt : cv->points) {
      lr_lo = std::min(lr_lo, pt.lr), lr_hi = std::max(lr_hi, pt.lr);
      if (pt.ok() || (pt.state == "running" && std::isfinite(pt.loss)))
        lo = std::min(lo, pt.loss), hi = std::max(hi, pt.loss);
    }
    if (std::isfinite(cv->rule_lr))
      lr_lo = std::min(lr_lo, cv->rule_lr), lr_hi = std::max(lr_hi, cv->rule_lr);
  }
  if (!(lr_hi > lr_lo)) lr_lo /= 2, lr_hi *= 2;
  p.lx0 = std::log10(lr_lo) - 0.08 * std::max(0.3, std::log10(lr_hi / lr_lo));
  p.lx1 = std::log10(lr_hi) + 0.08 * std::max(0.3, std::log10(lr_hi / lr_lo));
  if (!std::isfinite(lo)) lo = 1, hi = 2;  // nothing finished: an empty loss axis
  if (!(hi > lo)) lo *= 0.98, hi *= 1.02;
  p.y_lo = lo - 0.06 * (hi - lo);
  p.y_hi = hi + 0.06 * (hi - lo);

  // Grid, the diverged band over it, frame, ticks.
  canvas::draw_axes(
      cr,
      {.x0 = p.x0,
       .y0 = p.y0,
       .w = p.w,
       .h = p.h,
       .x_ticks = log_ticks(std::pow(10.0, p.lx0), std::pow(10.0, p.lx1)),
       .y_ticks = log_ticks(p.y_lo, p.y_hi),
       .px = [&p](double lr) { return p.px(lr); },
       .py = [&p](double loss) { return p.py(loss); },
       .label_size = 12,
       .x_label_drop = 22,
       .minor_y = false},
      [&p](cairo_t* c) {
        cairo_set_source_rgb(c, 0.96, 0.93, 0.93);
        cairo_rectangle(c, p.x0, p.y0, p.w, kBand);
        cairo_fill(c);
      });
  font(cr, 13, true);
  const LrCurve& first = *curves.front();
  centered(cr, p.x0 + p.w / 2, p.y0 - 10,
           "L" + std::to_string(first.layers) + ": N = " + si(static_cast<double>(size)) +
               " (non-embedding), " + si(first.tokens) + " tokens");
  font(cr, 9);
  cairo_set_source_rgb(cr, 0.55, 0.3, 0.3);
  cairo_move_to(cr, p.x0 + 4, p.y0 + 9);
  cairo_show_text(cr, "diverged / failed");

  cairo_save(cr);
  cairo_rectangle(cr, p.x0, p.y0, p.w, p.h);
  cairo_clip(cr);
  // The sweep's rule at this size: a dotted vertical line.
  if (std::isfinite(first.rule_lr)) {
    const double dots[] = {2.0, 3.0};
    cairo_set_dash(cr, dots, 2, 0);
    cairo_set_source_rgb(cr, 0.3, 0.3, 0.3);
    cairo_set_line_width(cr, 1.2);
    cairo_move_to(cr, p.px(first.rule_lr), p.y0 + kBand);
    cairo_line_to(cr, p.px(first.rule_lr), p.y0 + p.h);
    cairo_stroke(cr);
  }
  for (const LrCurve* cv : curves) {
    const auto c = attention_color(cv->attention);
    // The line through consecutive finished points; a diverged or failed run breaks it.
    line_style(cr, cv->tied);
    rgb(cr, c, 0.8);
    bool pen = false;
    for (const LrPoint& pt : cv->points) {
      if (!pt.ok()) {
        pen = false;
        continue;
      }
      (pen ? cairo_line_to : cairo_move_to)(cr, p.px(pt.lr), p.py(pt.loss));
      pen = true;
    }
    cairo_stroke(cr);
    for (size_t i = 0; i < cv->points.size(); ++i) {
      const LrPoint& pt = cv->points[i];
      const double x = p.px(pt.lr);
      if (pt.ok())
        marker(cr, marker_of(lay, *cv), x, p.py(pt.loss), c, false);
      else if (pt.state == "running" && std::isfinite(pt.loss))
        marker(cr, marker_of(lay, *cv), x, p.py(pt.loss), c, true);
      else
        cross(cr, x, p.y0 + kBand / 2 + 2, c);
    }
    if (cv->best >= 0) ring(cr, p.px(cv->points[cv->best].lr), p.py(cv->points[cv->best].loss));
  }
  cairo_restore(cr);
}

void draw_legend(cairo_t* cr, const LrSearch& s, const Layout& lay) {
  const double x0 = lay.width - kLegendW, row = 20;
  double y = kTop + 8;
  std::vector<const LrCurve*> lines;
  for (const LrCurve& cv : s.curves) {
    bool seen = false;
    for (const LrCurve* l : lines) seen = seen || l->label() == cv.label();
    if (!seen) lines.push_back(&cv);
  }
  font(cr, 11.5);
  for (const LrCurve* cv : lines) {
    const auto c = attention_color(cv->attention);
    line_style(cr, cv->tied);
    rgb(cr, c, 0.8);
    cairo_move_to(cr, x0, y);
    cairo_line_to(cr, x0 + 34, y);
    cairo_stroke(cr);
    marker(cr, marker_of(lay, *cv), x0 + 17, y, c, false);
    cairo_set_source_rgb(cr, 0, 0, 0);
    cairo_move_to(cr, x0 + 44, y + 4);
    cairo_show_text(cr, cv->label().c_str());
    y += row;
  }
  y += 6;
  ring(cr, x0 + 17, y);
  cairo_set_source_rgb(cr, 0, 0, 0);
  cairo_move_to(cr, x0 + 44, y + 4);
  cairo_show_text(cr, "the curve's best run");
  y += row;
  cross(cr, x0 + 17, y, {0.3, 0.3, 0.3});
  cairo_set_source_rgb(cr, 0, 0, 0);
  cairo_move_to(cr, x0 + 44, y + 4);
  cairo_show_text(cr, "diverged or failed (top band)");
  y += row;
  const double dots[] = {2.0, 3.0};
  cairo_set_dash(cr, dots, 2, 0);
  cairo_set_source_rgb(cr, 0.3, 0.3, 0.3);
  cairo_set_line_width(cr, 1.2);
  cairo_move_to(cr, x0 + 17, y - 8);
  cairo_line_to(cr, x0 + 17, y + 8);
  cairo_stroke(cr);
  cairo_set_dash(cr, nullptr, 0, 0);
  cairo_set_source_rgb(cr, 0, 0, 0);
  cairo_move_to(cr, x0 + 44, y + 4);
  cairo_show_text(cr, "the sweep's [lr] rule (plan.json)");
  // The fitted rule, when two sizes give one.
  if (!s.rules.empty() && std::isfinite(s.rules.front().e_n)) {
    y += row * 1.6;
    const LrRuleFit& f = s.rules.front();
    char buf[96];
    std::snprintf(buf, sizeof buf, "fitted: lr_opt = %.3g \u00d7 N", f.c_n);
    canvas::show_sup(cr, x0, y, 11.5, buf, signed_number(-f.e_n, 3));
    std::snprintf(buf, sizeof buf, "(%d optima, %d sizes)", f.optima, f.sizes);
    font(cr, 11.5);
    cairo_move_to(cr, x0, y + 16);
    cairo_show_text(cr, buf);
  }
}

void draw(cairo_t* cr, const LrSearch& s, const Layout& lay) {
  cairo_set_source_rgb(cr, 1, 1, 1);
  cairo_paint(cr);
  for (size_t i = 0; i < lay.sizes.size(); ++i) draw_panel(cr, s, lay, i);
  const double plots_w = lay.width - kLegendW - 24 - kLeft;
  cairo_set_source_rgb(cr, 0, 0, 0);
  font(cr, 15, true);
  centered(cr, kLeft + plots_w / 2, 26, "Final validation loss against learning rate");
  font(cr, 13);
  centered(cr, kLeft + plots_w / 2, kTop + kPanelH + 50, "peak learning rate");
  const std::string y_label = "final validation loss (nats/token)";
  cairo_save(cr);
  cairo_move_to(cr, 24, kTop + (kPanelH + advance(cr, y_label)) / 2);
  cairo_rotate(cr, -M_PI / 2);
  cairo_show_text(cr, y_label.c_str());
  cairo_restore(cr);
  font(cr, 9.5);
  cairo_set_source_rgb(cr, 0.35, 0.35, 0.35);
  char foot[160];
  std::snprintf(foot, sizeof foot,
                "%d runs: %d finished, %d diverged, %d failed, %d unfinished (hollow). "
                "Loss: each run's last validation.",
                s.count("ok") + s.count("diverged") + s.count("failed") + s.count("running") +
                    s.count("no validation"),
                s.count("ok"), s.count("diverged"), s.count("failed"), s.count("running"));
  cairo_move_to(cr, 10, lay.height - 10);
  cairo_show_text(cr, foot);
  draw_legend(cr, s, lay);
}

}  // namespace

std::vector<fs::path> write_lr_figure(const LrSearch& s, const fs::path& dir, double png_scale) {
  MOBA_CHECK(!s.curves.empty(), "no learning-rate curves to draw");
  fs::create_directories(dir);
  const Layout lay = layout_of(s);
  const canvas::Paint paint = [&](cairo_t* cr) { draw(cr, s, lay); };
  std::vector<fs::path> out = {dir / "lr_search.png", dir / "lr_search.svg"};
  canvas::write_png(paint, lay.width, lay.height, out[0], png_scale);
  canvas::write_svg(paint, lay.width, lay.height, out[1]);
  return out;
}

}  // namespace moba::scaling
