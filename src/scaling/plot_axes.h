// Log-axis ticks for the figures: pure arithmetic, kept apart from the drawing so that it
// can be tested without cairo.
#pragma once

#include <string>
#include <vector>

namespace moba::scaling {

struct Tick {
  double value = 0;
  bool major = true;     // labelled; minor ticks are short and unlabelled
  std::string base;      // "10", "2×10" or a plain number "2.5"
  std::string exponent;  // superscript drawn after base ("−3"); empty for plain numbers
};

// Ticks of a log axis over [lo, hi] (0 < lo < hi). Spans of more than ~1.3 decades get a
// labelled tick per decade (10^k) and minor ticks at 2..9 x 10^k, with 2x and 5x labelled
// too when fewer than three decades show. Narrower spans (a loss axis, say 1.8 to 3.5) get
// "nice" steps (1, 2, 2.5 or 5 x 10^k) chosen to give 4 to 8 labels, as plain decimals;
// from the top down, a label within a tenth of the span (in log) of the one above it is
// left unlabelled (the steps crowd toward the top of a log axis).
std::vector<Tick> log_ticks(double lo, double hi);

// "−0.063": a signed number with the typographic minus sign, `decimals` after the point.
std::string signed_number(double x, int decimals);

}  // namespace moba::scaling
