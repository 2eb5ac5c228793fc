// The study: for every attention type, metric and compute convention, the frontier of
// the runs, its power-law fit and bootstrap intervals. What `moba fit` prints and what
// `moba plot` and `moba report` draw from.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "scaling/fit.h"

namespace moba::scaling {

struct StudyOptions {
  std::vector<Metric> metrics;  // empty: every metric the runs carry
  std::vector<Compute> computes = {Compute::k6nd, Compute::kExec};
  bool irreducible = false;     // fit L = E + A C^-alpha instead of L = A C^-alpha
  int bootstrap = 1000;         // replicas; 0 for none
  uint64_t seed = 1;            // of the bootstrap draws
  int points_per_decade = 16;   // of the envelope's compute grid
  FitFrom fit_from = FitFrom::kFirstFinish;  // which part of the envelope is fitted
  bool include_failed = false;  // runs with status "failed" are left out unless set
};

struct FitResult {
  Metric metric;
  std::string attention;
  Compute compute = Compute::k6nd;
  std::vector<Curve> curves;  // one per run that has points (Curve::run indexes Study::runs)
  std::vector<FrontierPoint> frontier;
  double fit_c_min = 0;                 // frontier points below this compute are not fitted
  std::optional<FitStats> fit;          // absent when the frontier cannot be fitted
  std::string why_no_fit;               // then: why
  std::optional<Bootstrap> bootstrap;   // absent when not asked for
};

struct Study {
  std::vector<Run> runs;
  StudyOptions options;
  int64_t bucket_size = 0;              // shared by the runs (0: no buckets)
  std::vector<std::string> attentions;  // present, in the order moba, full, hybrid
  std::vector<FitResult> fits;
  std::vector<std::string> notes;       // flagged runs, warnings, skipped fits
  // Per run: used by the fits (seeds.h, fit_runs(): of seed replicas, the lowest seed only).
  std::vector<bool> in_fits;

  const FitResult* find(const Metric& m, const std::string& attention, Compute c) const;
  std::string label(const Metric& m) const { return m.label(bucket_size); }
};

// Checks the metrics exist, builds curves, frontiers and fits. Runs with status
// "running" are included and noted; "failed" ones are left out unless asked.
Study run_study(std::vector<Run> runs, const StudyOptions& options);

// "LM loss (MoBA) = 2.625 x C^-0.063", or with E: "... = 1.210 + 2.625 x C^-0.063".
std::string formula(const std::string& metric_label, const std::string& attention,
                    const PowerLaw& law, bool irreducible);
std::string formula(const Study& s, const FitResult& f);

// Everything above as JSON (the runs summarised, each fit with its frontier).
nlohmann::json to_json(const Study& s);

// Status mark used in tables and notes: "" for finished, "running", "failed".
std::string run_flag(const Run& r);

}  // namespace moba::scaling
