// What a fit or a plot is made of: one run's loss-against-compute curve for one metric
// under one compute convention.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "scaling/runs.h"

namespace moba::scaling {

// PFLOP/s-days: the paper's compute unit, FLOPs / (1e15 * 86400).
inline constexpr double kFlopsPerPflopsDay = 1e15 * 86400.0;

// Which FLOP count is the compute axis: 6ND (the paper's, attention not counted) or the
// FLOPs the trainer executed (attention included, selected pairs only for MoBA).
enum class Compute { k6nd, kExec };
Compute parse_compute(std::string_view s);   // "6nd" or "exec"
std::string compute_id(Compute c);           // "6nd" / "exec"
std::string compute_label(Compute c);        // "6ND" / "executed FLOPs"

// A loss of a validation point: the LM loss (all positions), position bucket `bucket`, or
// the trailing loss.
struct Metric {
  enum Kind { kLm, kBucket, kTrailing };
  Kind kind = kLm;
  int bucket = -1;  // kBucket only

  static Metric lm() { return {kLm, -1}; }
  static Metric trailing() { return {kTrailing, -1}; }
  static Metric position_bucket(int i) { return {kBucket, i}; }
  // "lm", "trailing", "bucket:I"; throws naming the accepted forms.
  static Metric parse(std::string_view s);
  std::string id() const;    // the parse form
  std::string slug() const;  // for file names: lm, bucket2, trailing
  // As the paper writes it: "LM loss", "LM loss 4K-6K" (needs bucket_size), "trailing loss".
  std::string label(int64_t bucket_size) const;
  // The value at a validation point; NaN when the point does not carry it.
  double value(const ValPoint& p) const;
  bool operator==(const Metric&) const = default;
  bool operator<(const Metric& o) const {
    return kind != o.kind ? kind < o.kind : bucket < o.bucket;
  }
};

// "4K" for multiples of 1024, the plain number otherwise.
std::string positions_label(int64_t positions);

// Compute of a validation point in PFLOP/s-days.
double compute_pfdays(const ValPoint& p, Compute c);

// One run's curve: points with compute > 0 and a finite positive loss, strictly
// increasing compute (of equal computes the later point is kept).
struct Curve {
  int run = -1;  // index into the runs it was made from
  bool finished = true;  // the run's status is "finished"
  std::vector<double> c, loss;
  bool empty() const { return c.empty(); }
};
Curve make_curve(const Run& run, int run_index, const Metric& m, Compute compute);

// The metrics the runs carry: lm, every bucket index any run has, trailing if any run has
// a finite trailing loss.
std::vector<Metric> metrics_present(const std::vector<Run>& runs);

// The bucket size shared by the runs' validation points (0 when none has buckets). Throws
// naming two runs when they disagree, since bucket i would then mean different positions.
int64_t common_bucket_size(const std::vector<Run>& runs);

// Display name of an attention type: "MoBA", "Full", "Hybrid".
std::string attention_label(const std::string& attention);

}  // namespace moba::scaling
