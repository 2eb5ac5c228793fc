#include "scaling/curves.h"

#include <charconv>
#include <cmath>
#include <set>

#include "core/error.h"

namespace moba::scaling {

Compute parse_compute(std::string_view s) {
  if (s == "6nd") return Compute::k6nd;
  if (s == "exec") return Compute::kExec;
  throw Error("compute convention must be 6nd or exec, got '" + std::string(s) + "'");
}

std::string compute_id(Compute c) { return c == Compute::k6nd ? "6nd" : "exec"; }
std::string compute_label(Compute c) { return c == Compute::k6nd ? "6ND" : "executed FLOPs"; }

Metric Metric::parse(std::string_view s) {
  if (s == "lm") return lm();
  if (s == "trailing") return trailing();
  if (s.rfind("bucket:", 0) == 0) {
    const std::string_view num = s.substr(7);
    int i = -1;
    const auto [ptr, ec] = std::from_chars(num.data(), num.data() + num.size(), i);
    if (ec == std::errc() && ptr == num.data() + num.size() && i >= 0) return position_bucket(i);
  }
  throw Error("metric must be lm, trailing or bucket:I (I >= 0 a bucket index), got '" +
              std::string(s) + "'");
}

std::string Metric::id() const {
  switch (kind) {
    case kLm: return "lm";
    case kTrailing: return "trailing";
    default: return "bucket:" + std::to_string(bucket);
  }
}

std::string Metric::slug() const {
  switch (kind) {
    case kLm: return "lm";
    case kTrailing: return "trailing";
    default: return "bucket" + std::to_string(bucket);
  }
}

std::string positions_label(int64_t n) {
  if (n > 0 && n % 1024 == 0) return std::to_string(n / 1024) + "K";
  return std::to_string(n);
}

std::string Metric::label(int64_t bucket_size) const {
  switch (kind) {
    case kLm: return "LM loss";
    case kTrailing: return "Trailing loss";
    default:
      if (bucket_size <= 0) return "LM loss bucket " + std::to_string(bucket);
      return "LM loss " + positions_label(bucket * bucket_size) + "-" +
             positions_label((bucket + 1) * bucket_size);
  }
}

double Metric::value(const ValPoint& p) const {
  switch (kind) {
    case kLm: return p.loss;
    case kTrailing: return p.trailing_loss;
    default:
      return bucket >= 0 && static_cast<size_t>(bucket) < p.bucket_losses.size()
                 ? p.bucket_losses[static_cast<size_t>(bucket)]
                 : kNaN;
  }
}

double compute_pfdays(const ValPoint& p, Compute c) {
  return (c == Compute::k6nd ? p.flops_6nd : p.flops_exec) / kFlopsPerPflopsDay;
}

Curve make_curve(const Run& run, int run_index, const Metric& m, Compute compute) {
  Curve curve;
  curve.run = run_index;
  curve.finished = run.info.status == "finished";
  for (const ValPoint& p : run.val) {  // ascending step, so non-decreasing compute
    const double c = compute_pfdays(p, compute), l = m.value(p);
    if (!(c > 0) || !std::isfinite(c) || !(l > 0) || !std::isfinite(l)) continue;
    if (!curve.c.empty() && c <= curve.c.back()) {
      // Equal compute (a repeated evaluation): keep the later one. Decreasing compute
      // cannot come from one run; drop it rather than fold the curve back.
      if (c == curve.c.back()) curve.loss.back() = l;
      continue;
    }
    curve.c.push_back(c);
    curve.loss.push_back(l);
  }
  return curve;
}

std::vector<Metric> metrics_present(const std::vector<Run>& runs) {
  std::set<Metric> found{Metric::lm()};
  for (const Run& r : runs)
    for (const ValPoint& p : r.val) {
      for (size_t i = 0; i < p.bucket_losses.size(); ++i)
        if (std::isfinite(p.bucket_losses[i])) found.insert(Metric::position_bucket(static_cast<int>(i)));
      if (std::isfinite(p.trailing_loss)) found.insert(Metric::trailing());
    }
  return {found.begin(), found.end()};
}

int64_t common_bucket_size(const std::vector<Run>& runs) {
  int64_t size = 0;
  const Run* first = nullptr;
  for (const Run& r : runs)
    for (const ValPoint& p : r.val) {
      if (p.bucket_losses.empty()) continue;
      if (!first) {
        size = p.bucket_size;
        first = &r;
      }
      MOBA_CHECK(p.bucket_size == size, "runs disagree on bucket_size: '", first->info.name,
                 "' has ", size, ", '", r.info.name, "' has ", p.bucket_size, " (step ", p.step,
                 "); bucket i must mean the same positions in every run");
    }
  return size;
}

std::string attention_label(const std::string& a) {
  if (a == "moba") return "MoBA";
  if (a == "full") return "Full";
  if (a == "hybrid") return "Hybrid";
  return a;
}

}  // namespace moba::scaling
