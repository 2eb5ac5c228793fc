// The planner's estimates against the runs' measured times, on hand-made run folders whose
// elapsed times are known: the measured time (last step plus the final validation's pause),
// the table's errors, the 15% verdict, unfinished and failed runs, and where plan.json is
// looked for (RUNS_DIR, then its parent; none: no section and no error).
#include "scaling/plan_times.h"

#include <gtest/gtest.h>

#include <cmath>

#include <nlohmann/json.hpp>

#include "scaling/lr_search.h"
#include "scaling/report.h"
#include "scaling/synthetic.h"
#include "scaling/temp_dir.h"

namespace moba::scaling {
namespace {

using testing::read_file, testing::write_file, testing::TempDir;
namespace fs = std::filesystem;
constexpr int64_t kSteps = 10;

// A run of kSteps steps of `step_s` seconds each, validated at step 5 and at the end; the
// validation (and checkpoint) at step 5 pauses the clock for `pause` seconds, so the line
// of step 6 is late by that much. Measured time: kSteps x step_s + 2 x pause (the final
// validation is taken to pause as long as the earlier one). `last_step` < kSteps: the run
// stopped there.
void write_run(const fs::path& dir, const std::string& name, double step_s, double pause,
               const std::string& status = "finished", int64_t last_step = kSteps) {
  // What the learning-rate search needs besides: a size, a learning rate, a warm-up.
  RunInfo info;
  info.name = name;
  info.attention = "full";
  info.layers = info.heads = 3;
  info.width = 192;
  info.seq_len = info.vocab_size = 256;
  info.params_non_embedding = 1000;
  info.tokens_planned = 1e4;
  info.status = status;
  info.lr = 1e-3;
  info.steps = kSteps;
  info.warmup_steps = 1;
  info.tied_embeddings = 1;
  write_run_json(dir / name, info);
  std::string lines;
  for (int64_t s = 1; s <= last_step; ++s) {
    const double t = static_cast<double>(s) * step_s + (s > 5 ? pause : 0.0);
    lines += train_line({s, 1000.0 * static_cast<double>(s), 3.0, 0, 0, t}) + "\n";
    if (s == 5 || s == kSteps) {
      ValPoint v;
      v.step = s;
      v.tokens = 1000.0 * static_cast<double>(s);
      v.loss = 2.0 + 1e-3 / step_s;
      lines += val_line(v) + "\n";
    }
  }
  write_file(dir / name / "metrics.jsonl", lines);
}

// plan.json as `moba sweep` writes it, reduced to what the comparison reads.
void write_plan(const fs::path& path, const std::vector<std::pair<std::string, double>>& runs) {
  nlohmann::json rs = nlohmann::json::array();
  for (const auto& [name, seconds] : runs)
    rs.push_back({{"name", name},
                  {"steps", kSteps},
                  {"seconds_estimated", seconds >= 0 ? nlohmann::json(seconds) : nullptr}});
  write_file(path, nlohmann::json{{"sweep", "t"}, {"device", "cuda"}, {"runs", rs}}.dump(2));
}

TEST(PlanTimes, MeasuredIsTheLastStepPlusTheFinalValidation) {
  TempDir tmp;
  write_run(tmp.path(), "a", 1.0, 0.4);
  std::string why = "x";
  // 10 steps of 1 s, the pause at step 5 (0.4 s, inside the last line's 10.4 s), and the
  // final validation's, not in any line, taken as 0.4 s too.
  EXPECT_NEAR(measured_seconds(read_run(tmp.path() / "a"), kSteps, &why), 10.8, 1e-9);
  EXPECT_EQ(why, "");
}

TEST(PlanTimes, UnfinishedAndFailedRunsHaveNoMeasuredTime) {
  TempDir tmp;
  write_run(tmp.path(), "running", 1.0, 0.4, "running", 7);
  write_run(tmp.path(), "failed", 1.0, 0.4, "failed", 7);
  write_run(tmp.path(), "stopped", 1.0, 0.4, "finished", 7);  // a run.json left as finished
  std::string why;
  EXPECT_TRUE(std::isnan(measured_seconds(read_run(tmp.path() / "running"), kSteps, &why)));
  EXPECT_EQ(why, "unfinished (step 7 of 10)");
  EXPECT_TRUE(std::isnan(measured_seconds(read_run(tmp.path() / "failed"), kSteps, &why)));
  EXPECT_EQ(why, "failed");
  EXPECT_TRUE(std::isnan(measured_seconds(read_run(tmp.path() / "stopped"), kSteps, &why)));
  EXPECT_EQ(why, "unfinished (step 7 of 10)");
}

// plan.json beside runs/ (as results/h100-small keeps it): errors are (planned - measured)
// / measured; one run 20% under, so the bar is missed; a failed run and a planned run
// without a folder are listed without an error.
TEST(PlanTimes, TableErrorsAndTheVerdict) {
  TempDir tmp;
  const fs::path runs = tmp.path() / "runs";
  write_run(runs, "over", 1.0, 0.4);    // measured 10.8
  write_run(runs, "under", 2.0, 0.0);   // measured 20
  write_run(runs, "broken", 1.0, 0.4, "failed", 3);
  write_run(runs, "extra", 1.0, 0.4);   // not in the plan
  write_plan(tmp.path() / "plan.json",
             {{"over", 11.88}, {"under", 16.0}, {"broken", 10.0}, {"never", 5.0}});
  const std::optional<PlanTimes> t = plan_times(read_runs(runs), runs);
  ASSERT_TRUE(t);
  EXPECT_EQ(fs::canonical(t->plan), fs::canonical(tmp.path() / "plan.json"));
  ASSERT_EQ(t->rows.size(), 4u);
  EXPECT_NEAR(t->rows[0].error(), 0.10, 1e-9);
  EXPECT_NEAR(t->rows[1].error(), -0.20, 1e-9);
  EXPECT_EQ(t->rows[2].state, "failed");
  EXPECT_EQ(t->rows[3].state, "no run folder");
  EXPECT_EQ(t->compared(), 2);
  EXPECT_NEAR(t->max_abs_error(), 0.20, 1e-9);
  EXPECT_FALSE(t->within_bar());
  EXPECT_EQ(t->not_in_plan, 1);
  const std::string md = plan_times_markdown(*t);
  for (const char* needle :
       {"## Planned against measured time", "| over | 11.9 | 10.8 | +10.0% |",
        "| under | 16.0 | 20.0 | -20.0% (over 15%) |", "| broken | 10.0 | - | failed |",
        "| never | 5.0 | - | no run folder |", "1 run folder is not in the plan",
        "Planned against measured time: 2 of 4 runs compared, max |error| 20.0% (under); every "
        "compared run within 15%: **no** (2 not compared)."})
    EXPECT_NE(md.find(needle), std::string::npos) << needle << "\n" << md;
}

TEST(PlanTimes, WithinTheBarAndPlanInRunsDir) {
  TempDir tmp;
  write_run(tmp.path(), "a", 1.0, 0.4);  // 10.8
  write_run(tmp.path(), "b", 2.0, 0.0);  // 20
  write_plan(tmp.path() / "plan.json", {{"a", 10.8 * 0.86}, {"b", 20.0 * 1.149}});
  const std::optional<PlanTimes> t = plan_times(read_runs(tmp.path()), tmp.path());
  ASSERT_TRUE(t);
  EXPECT_EQ(fs::canonical(t->plan), fs::canonical(tmp.path() / "plan.json"));
  EXPECT_NEAR(t->max_abs_error(), 0.149, 1e-9);
  EXPECT_TRUE(t->within_bar());
  EXPECT_EQ(t->summary(),
            "Planned against measured time: 2 of 2 runs compared, max |error| 14.9% (b); every "
            "compared run within 15%: yes.");
}

TEST(PlanTimes, NoPlanNoSection) {
  TempDir tmp;
  const fs::path runs = tmp.path() / "study" / "runs";
  write_run(runs, "a", 1.0, 0.4);
  EXPECT_TRUE(find_plan_json(runs).empty());
  EXPECT_FALSE(plan_times(read_runs(runs), runs));
  const auto files = write_lr_search(runs, tmp.path() / "lr");
  EXPECT_EQ(read_file(tmp.path() / "lr" / "lr_search.md").find("Planned against"),
            std::string::npos);
}

TEST(PlanTimes, LrSearchMarkdownHasTheTable) {
  TempDir tmp;
  write_run(tmp.path() / "runs", "a", 1.0, 0.4);
  write_plan(tmp.path() / "runs" / "plan.json", {{"a", 12.96}});  // +20%
  write_lr_search(tmp.path() / "runs", tmp.path() / "lr");
  const std::string md = read_file(tmp.path() / "lr" / "lr_search.md");
  EXPECT_NE(md.find("| a | 13.0 | 10.8 | +20.0% (over 15%) |"), std::string::npos) << md;
  EXPECT_NE(md.find("every compared run within 15%: **no**."), std::string::npos) << md;
}

// A plan with the time model's parts (plan.h, TimeParts): the table gains their columns,
// and plan_times_json carries them with the unrounded times; a row without parts shows "-".
TEST(PlanTimes, PartsOfThePlannedTime) {
  TempDir tmp;
  write_run(tmp.path(), "a", 1.0, 0.4);  // 10.8
  write_run(tmp.path(), "b", 2.0, 0.0);  // 20
  nlohmann::json plan = {
      {"sweep", "t"},
      {"runs",
       {{{"name", "a"},
         {"steps", kSteps},
         {"seconds_estimated", 11.0},
         {"seconds_estimated_parts",
          {{"per_token", 2.0}, {"matmul", 3.0}, {"full_attention", 6.0}, {"moba_attention", 0.0}}}},
        {{"name", "b"}, {"steps", kSteps}, {"seconds_estimated", 19.0}}}}};
  write_file(tmp.path() / "plan.json", plan.dump(2));
  const std::optional<PlanTimes> t = plan_times(read_runs(tmp.path()), tmp.path());
  ASSERT_TRUE(t);
  ASSERT_EQ(t->rows.size(), 2u);
  EXPECT_TRUE(t->rows[0].has_parts());
  EXPECT_EQ(t->rows[0].planned_full_attention, 6.0);
  EXPECT_FALSE(t->rows[1].has_parts());
  const std::string md = plan_times_markdown(*t);
  for (const char* needle :
       {"| run | planned (s) | per token | matmuls | full attn. | MoBA attn. | measured (s) | "
        "error |",
        "| a | 11.0 | 2.0 | 3.0 | 6.0 | 0.0 | 10.8 | +1.9% |",
        "| b | 19.0 | - | - | - | - | 20.0 | -5.0% |"})
    EXPECT_NE(md.find(needle), std::string::npos) << needle << "\n" << md;
  const nlohmann::json j = plan_times_json(*t);
  EXPECT_EQ(j["compared"], 2);
  EXPECT_NEAR(j["max_abs_error"].get<double>(), 0.05, 1e-9);
  ASSERT_EQ(j["runs"].size(), 2u);
  EXPECT_EQ(j["runs"][0]["run"], "a");
  EXPECT_NEAR(j["runs"][0]["measured_s"].get<double>(), 10.8, 1e-9);
  EXPECT_NEAR(j["runs"][0]["error"].get<double>(), 11.0 / 10.8 - 1, 1e-12);
  EXPECT_EQ(j["runs"][0]["planned_parts_s"]["matmul"], 3.0);
  EXPECT_FALSE(j["runs"][1].contains("planned_parts_s"));
  // Without parts anywhere: the four-column table, as before.
  write_plan(tmp.path() / "plan.json", {{"a", 11.0}, {"b", 19.0}});
  EXPECT_NE(plan_times_markdown(*plan_times(read_runs(tmp.path()), tmp.path()))
                .find("| run | planned (s) | measured (s) | error |"),
            std::string::npos);
}

// The report: the section with plan.json beside runs/, none (and no error) without it.
TEST(PlanTimes, ReportSectionOnlyWithAPlan) {
  TempDir tmp;
  const fs::path runs = tmp.path() / "runs";
  write_synthetic_runs(runs, SyntheticSpec{});
  ReportOptions o;
  o.study.bootstrap = 0;
  const std::string without = read_file(write_report(runs, tmp.path() / "out1", o));
  EXPECT_EQ(without.find("Planned against measured time"), std::string::npos);

  const std::string name = read_runs(runs).front().info.name;
  write_plan(tmp.path() / "plan.json", {{name, 100.0}});
  const std::string with = read_file(write_report(runs, tmp.path() / "out2", o));
  EXPECT_NE(with.find("## Planned against measured time"), std::string::npos);
  // Synthetic runs record no elapsed time: listed, not compared.
  EXPECT_NE(with.find("| " + md_cell(name) + " | 100.0 | - | no elapsed time recorded |"),
            std::string::npos)
      << with;
  EXPECT_NE(with.find("no run of the plan (1) has both an estimate and a measured time"),
            std::string::npos);
  // ... and the comparison as JSON beside it (none without a plan).
  EXPECT_FALSE(fs::exists(tmp.path() / "out1" / "plan_times.json"));
  const nlohmann::json j = nlohmann::json::parse(read_file(tmp.path() / "out2" / "plan_times.json"));
  EXPECT_EQ(j["runs"][0]["run"], name);
  EXPECT_EQ(j["runs"][0]["planned_s"], 100.0);
  EXPECT_TRUE(j["runs"][0]["measured_s"].is_null());
  EXPECT_EQ(j["runs"][0]["state"], "no elapsed time recorded");
}

}  // namespace
}  // namespace moba::scaling
