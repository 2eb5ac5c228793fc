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
