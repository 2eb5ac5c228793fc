// The planner's time estimates against the times the runs took: `moba sweep` writes each
// run's estimate to RUNS_DIR/plan.json (plan.h, "seconds_estimated"), the trainer records
// the elapsed time in metrics.jsonl (runs.h, TrainPoint::elapsed_s). `moba report` and
// `moba plot lr` show the comparison when they find a plan.json; issue 13's bar is 15%.
#pragma once

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "scaling/runs.h"

namespace moba::scaling {

// The time a run took, comparable with the planner's estimate, which counts the training
// tokens and every validation (plan.cpp, make_plan) but not the process's start-up: the
// last training line's elapsed_s (the trainer's clock starts when the training loop does,
// after the model, data and validation windows are set up, and runs through every step,
// validation and checkpoint before it) plus the final validation and checkpoint, which
// come after that line and are not timed in metrics.jsonl: they are taken as the mean
// pause of the run's earlier ones (the gap after a validated step beyond the median step).
// NaN, with the reason in *why, when the run has no such time: failed, unfinished (fewer
// than `steps` steps; steps <= 0: run.json's), or no elapsed time recorded.
double measured_seconds(const Run& run, int64_t steps, std::string* why = nullptr);

struct PlanTimeRow {
  std::string run;
  double planned = kNaN;   // plan.json's seconds_estimated
  // plan.json's seconds_estimated_parts (the time model's parts: plan.h, TimeParts); NaN
  // when the plan predates them.
  double planned_per_token = kNaN, planned_matmul = kNaN, planned_full_attention = kNaN,
         planned_moba_attention = kNaN;
  bool has_parts() const { return std::isfinite(planned_per_token); }
  double measured = kNaN;  // measured_seconds()
  std::string state;       // "" when both are known, else why the row has no error
  // (planned - measured) / measured: positive when the planner overestimates.
  double error() const { return (planned - measured) / measured; }
  bool compared() const { return state.empty(); }
};

struct PlanTimes {
  std::filesystem::path plan;  // the plan.json read
  std::string device;          // the device it was planned for ("" when not recorded)
  double bar = 0.15;           // issue 13's acceptance: within 15%
  std::vector<PlanTimeRow> rows;  // plan.json's runs, in its order
  int not_in_plan = 0;            // run folders the plan does not name (left out)
  std::string problem;            // plan.json could not be read: why (rows empty)
  int compared() const;
  double max_abs_error() const;  // NaN when no row is compared
  bool within_bar() const;       // every compared row's |error| <= bar
  std::string summary() const;   // the one-line verdict
};

// A plan.json (`moba sweep`'s plan) parsed; a discarded value when the file is missing or
// is not JSON (the readers below treat both as "no plan").
nlohmann::json read_plan_json(const std::filesystem::path& path);

// RUNS_DIR/plan.json, else plan.json in RUNS_DIR's parent (a study kept as DIR/plan.json
// beside DIR/runs/); empty when neither exists.
std::filesystem::path find_plan_json(const std::filesystem::path& runs_dir);

// The comparison for the runs read from runs_dir; nullopt when there is no plan.json.
std::optional<PlanTimes> plan_times(const std::vector<Run>& runs,
                                    const std::filesystem::path& runs_dir);

// The section "## Planned against measured time": what is compared, the table (with the
// planned time's parts when the plan has them) and the summary line.
std::string plan_times_markdown(const PlanTimes& t);

// The same as JSON (`moba report` writes it to OUT/plan_times.json): the plan's path, the
// bar, and per run its name, planned seconds (and parts), measured seconds and error (null
// where unknown) and the state.
nlohmann::json plan_times_json(const PlanTimes& t);

}  // namespace moba::scaling
