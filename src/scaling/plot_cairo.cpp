#include "scaling/plot_cairo.h"

#include <cairo-svg.h>

#include "core/error.h"

namespace moba::scaling::canvas {
namespace {

void check_cairo(cairo_status_t st, const std::filesystem::path& file) {
  MOBA_CHECK(st == CAIRO_STATUS_SUCCESS, "cannot write '", file.string(),
             "': ", cairo_status_to_string(st));
}

}  // namespace

void font(cairo_t* cr, double size, bool bold) {
  cairo_select_font_face(cr, kFont, CAIRO_FONT_SLANT_NORMAL,
                         bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
  cairo_set_font_size(cr, size);
}

double advance(cairo_t* cr, const std::string& s) {
  cairo_text_extents_t e;
  cairo_text_extents(cr, s.c_str(), &e);
  return e.x_advance;
}

double sup_width(cairo_t* cr, double size, const std::string& base, const std::string& exp) {
  font(cr, size);
  double w = advance(cr, base);
  if (!exp.empty()) {
    font(cr, size * 0.7);
    w += 1 + advance(cr, exp);
    font(cr, size);
  }
  return w;
}

void show_sup(cairo_t* cr, double x, double y, double size, const std::string& base,
              const std::string& exp) {
  font(cr, size);
  cairo_move_to(cr, x, y);
  cairo_show_text(cr, base.c_str());
  if (exp.empty()) return;
  const double w = advance(cr, base);
  font(cr, size * 0.7);
  cairo_move_to(cr, x + w + 1, y - size * 0.42);
  cairo_show_text(cr, exp.c_str());
  font(cr, size);
}

void draw_axes(cairo_t* cr, const Axes& a, const Paint& backdrop) {
  cairo_set_dash(cr, nullptr, 0, 0);
  cairo_set_line_width(cr, 0.6);
  cairo_set_source_rgb(cr, 0.88, 0.88, 0.88);
  for (const Tick& t : a.x_ticks)
    if (t.major) {
      cairo_move_to(cr, a.px(t.value), a.y0);
      cairo_line_to(cr, a.px(t.value), a.y0 + a.h);
    }
  for (const Tick& t : a.y_ticks)
    if (t.major) {
      cairo_move_to(cr, a.x0, a.py(t.value));
      cairo_line_to(cr, a.x0 + a.w, a.py(t.value));
    }
  cairo_stroke(cr);
  if (backdrop) {
    cairo_save(cr);
    backdrop(cr);
    cairo_restore(cr);
  }
  cairo_set_source_rgb(cr, 0, 0, 0);
  cairo_set_line_width(cr, 1.0);
  cairo_rectangle(cr, a.x0, a.y0, a.w, a.h);
  cairo_stroke(cr);
  const double size = a.label_size;
  for (const Tick& t : a.x_ticks) {
    const double x = a.px(t.value);
    cairo_move_to(cr, x, a.y0 + a.h);
    cairo_line_to(cr, x, a.y0 + a.h + (t.major ? 6 : 3));
    cairo_stroke(cr);
    if (t.major) {
      const double w = sup_width(cr, size, t.base, t.exponent);
      show_sup(cr, x - w / 2, a.y0 + a.h + a.x_label_drop, size, t.base, t.exponent);
    }
  }
  for (const Tick& t : a.y_ticks) {
    if (!t.major && !a.minor_y) continue;
    const double y = a.py(t.value);
    cairo_move_to(cr, a.x0, y);
    cairo_line_to(cr, a.x0 - (t.major ? 6 : 3), y);
    cairo_stroke(cr);
    if (t.major) {
      const double w = sup_width(cr, size, t.base, t.exponent);
      show_sup(cr, a.x0 - 10 - w, y + size * 0.36, size, t.base, t.exponent);
    }
  }
}

void write_png(const Paint& paint, double width, double height, const std::filesystem::path& file,
               double scale) {
  MOBA_CHECK(scale > 0 && scale <= 8, "PNG scale must be in (0, 8], got ", scale);
  cairo_surface_t* surface = cairo_image_surface_create(
      CAIRO_FORMAT_ARGB32, static_cast<int>(width * scale), static_cast<int>(height * scale));
  cairo_t* cr = cairo_create(surface);
  cairo_scale(cr, scale, scale);
  paint(cr);
  cairo_destroy(cr);
  const cairo_status_t st = cairo_surface_write_to_png(surface, file.c_str());
  cairo_surface_destroy(surface);
  check_cairo(st, file);
}

void write_svg(const Paint& paint, double width, double height, const std::filesystem::path& file) {
  cairo_surface_t* surface = cairo_svg_surface_create(file.c_str(), width, height);
  check_cairo(cairo_surface_status(surface), file);
  cairo_t* cr = cairo_create(surface);
  paint(cr);
  cairo_destroy(cr);
  cairo_surface_finish(surface);
  const cairo_status_t st = cairo_surface_status(surface);
  cairo_surface_destroy(surface);
  check_cairo(st, file);
}

}  // namespace moba::scaling::canvas
