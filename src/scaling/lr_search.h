// The learning-rate search's analysis: the runs of a sweep with a [search] table (plan.h,
// docs/sweep.md "Learning-rate search") read back as final validation loss against learning
// rate, one curve per (size, attention, embeddings, warm-up), and the learning-rate rule
// fitted across sizes. `moba plot lr RUNS_DIR -o DIR` writes its figure, lr_search.md and
// lr_search.json. Reads run folders only (runs.h), and RUNS_DIR/plan.json when present for
// the sweep's own rule at each size.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "scaling/plan_times.h"
#include "scaling/runs.h"

namespace moba::scaling {

// One run of a curve. Only "ok" points enter the best point, the parabola, the flat range
// and the rule; the others are drawn and listed with their state.
struct LrPoint {
  std::string run;
  double lr = 0;
  double loss = kNaN;  // the last validation loss
  // "ok"; "diverged": the final loss is not finite or above the initial loss (the first
  // training loss, else ln V); "failed": run.json says so (the trainer stops a run at a
  // non-finite loss); "running": unfinished; "no validation": no val line.
  std::string state = "ok";
  bool ok() const { return state == "ok"; }
};

// One (size, attention, embeddings, warm-up): its runs by increasing lr.
struct LrCurve {
  int64_t layers = 0, width = 0, params_non_embedding = 0;
  double tokens = 0;  // planned, for C = 6ND
  std::string attention;
  int tied = -1;                 // 1 tied, 0 untied, -1 unknown
  // From the run names' "-wu<fraction>" (a search's runs), else from their warm-up steps
  // (warmup_fraction_of); NaN when unknown.
  double warmup_fraction = kNaN;
  std::vector<LrPoint> points;
  int best = -1;  // index of the lowest ok loss; -1 when no point is ok
  // A parabola in ln(lr) through the best point and its ok neighbours: the optimum is
  // "bracketed" when both neighbours exist and the parabola opens upwards; otherwise the
  // best lr lies at the edge of the grid (or the neighbours are not ok) and fit_* are NaN.
  bool bracketed = false;
  double fit_lr = kNaN, fit_loss = kNaN;
  // The lrs next to the best whose losses are within the tolerance of the best loss
  // (contiguous ok points, walking outwards from the best).
  double flat_lo = kNaN, flat_hi = kNaN;
  double rule_lr = kNaN;  // the sweep's [lr] rule at this size (plan.json), NaN if unknown
  bool rule_in_flat() const;
  std::string label() const;  // "MoBA, tied, warm-up 0.02"
};

// lr_opt = c x X^-e, least squares in log space over the bracketed optima, X = N
// (non-embedding parameters) or C = 6ND (the form of the sweep's [lr] rule).
struct LrRuleFit {
  std::string over;      // "every curve" or a curve's label without its size
  int optima = 0;        // fitted optima used
  int sizes = 0;         // distinct sizes among them (an exponent needs two)
  double c_n = kNaN, e_n = kNaN;  // in N
  double c_c = kNaN, e_c = kNaN;  // in C = 6ND
  // The coefficient in C at the sweep's own exponent (kept, not fitted): one optimum is
  // enough, so this is the rule to use when too few sizes pin the exponent down.
  double c_fixed = kNaN;
};

struct LrSearch {
  std::filesystem::path runs_dir;
  double tolerance = 0.01;  // the flat range: losses within (1 + tolerance) x the best
  std::vector<LrCurve> curves;  // by size, attention, embeddings (tied first), warm-up
  std::vector<LrRuleFit> rules;  // every curve first, then one per (attention, embeddings, warm-up)
  double rule_exponent = kNaN;   // the sweep's lr.exponent (plan.json), for LrRuleFit::c_fixed
  std::vector<std::string> notes;
  // The plan's times against the runs' (plan_times.h), when a plan.json was found.
  std::optional<PlanTimes> plan_times;
  int count(const std::string& state) const;
};

// The simplest fraction f (fewest significant digits, then nearest) with
// round(f x steps) = warmup_steps: the planner's ladder.warmup_fraction or
// search.warmup_fractions value, so that a curve's runs of different sizes share a label.
double warmup_fraction_of(int64_t warmup_steps, int64_t steps);

// The sweep's rule per size (layers -> lr) from RUNS_DIR/plan.json; empty when it is absent
// or predates the search. And the rule's exponent (lr.exponent), NaN when absent.
std::map<int64_t, double> read_rule_lrs(const std::filesystem::path& runs_dir);
double read_rule_exponent(const std::filesystem::path& runs_dir);

// Groups the runs into curves and fits them. Runs without a learning rate in run.json are
// left out with a note. Throws moba::Error when no run has one.
LrSearch analyze_lr_search(const std::vector<Run>& runs,
                           const std::map<int64_t, double>& rule_lrs = {},
                           double tolerance = 0.01, double rule_exponent = kNaN);

std::string lr_search_markdown(const LrSearch& s);
nlohmann::json lr_search_json(const LrSearch& s);

// Final loss against lr, one panel per size, as lr_search.png and lr_search.svg in dir
// (created); returns the paths. Throws in builds without cairo.
std::vector<std::filesystem::path> write_lr_figure(const LrSearch& s,
                                                   const std::filesystem::path& dir,
                                                   double png_scale = 2.0);

// Reads RUNS_DIR, analyses it and writes lr_search.md, lr_search.json and (with cairo) the
// figure into out_dir; returns the paths written.
std::vector<std::filesystem::path> write_lr_search(const std::filesystem::path& runs_dir,
                                                   const std::filesystem::path& out_dir,
                                                   double tolerance = 0.01,
                                                   double png_scale = 2.0);

}  // namespace moba::scaling
