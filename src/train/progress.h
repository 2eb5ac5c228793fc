// What people read while a run goes: one short line per logged step and per validation.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>

#include "train/evaluate.h"

namespace moba::train {

// "42s", "3m05s", "2h07m".
inline std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  char buf[32];
  const long long t = std::llround(s);
  if (t < 60)
    std::snprintf(buf, sizeof buf, "%llds", t);
  else if (t < 3600)
    std::snprintf(buf, sizeof buf, "%lldm%02llds", t / 60, t % 60);
  else
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", t / 3600, (t % 3600) / 60);
  return buf;
}

// "812", "12.3k", "4.56M".
inline std::string format_count(double x) {
  char buf[32];
  if (x < 1e3)
    std::snprintf(buf, sizeof buf, "%.0f", x);
  else if (x < 1e6)
    std::snprintf(buf, sizeof buf, "%.1fk", x / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%.2fM", x / 1e6);
  return buf;
}

struct StepLine {
  int64_t step, steps;
  double loss, lr, grad_norm, tokens_per_s, gflops_per_s, elapsed_s, eta_s;
  const char* attention;  // what this step ran: "full", "moba" or "hybrid"
  double mfu = -1.0;      // executed FLOP/s / the device's peak; < 0: unknown (not shown)
};

inline void print_step(std::FILE* f, const StepLine& s) {
  if (!f) return;
  char mfu[32] = "";
  if (s.mfu >= 0) std::snprintf(mfu, sizeof mfu, " | MFU %.1f%%", 100.0 * s.mfu);
  std::fprintf(f,
               "step %6lld/%lld | loss %.4f | lr %.2e | gnorm %.3f | %s tok/s | %.2f GFLOP/s%s | "
               "%s | elapsed %s | ETA %s\n",
               static_cast<long long>(s.step), static_cast<long long>(s.steps), s.loss, s.lr,
               s.grad_norm, format_count(s.tokens_per_s).c_str(), s.gflops_per_s, mfu,
               s.attention, format_duration(s.elapsed_s).c_str(), format_duration(s.eta_s).c_str());
  std::fflush(f);
}

inline void print_eval(std::FILE* f, int64_t step, const EvalResult& r) {
  if (!f) return;
  char trailing[32] = "n/a";
  if (r.trailing_loss) std::snprintf(trailing, sizeof trailing, "%.4f", *r.trailing_loss);
  std::fprintf(
      f, "val  %6lld | loss %.4f | trailing %s | buckets of %lld:", static_cast<long long>(step),
      r.loss, trailing, static_cast<long long>(r.bucket_size));
  for (double b : r.bucket_losses) std::fprintf(f, " %.3f", b);
  std::fprintf(f, "\n");
  std::fflush(f);
}

}  // namespace moba::train
