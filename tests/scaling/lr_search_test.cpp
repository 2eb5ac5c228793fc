// The learning-rate search's analysis on hand-made run folders whose final losses follow
// a known parabola in ln(lr): the optimum is recovered, diverged and failed runs are kept
// and named, the flat range and the rule across sizes come out as constructed.
#include "scaling/lr_search.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "scaling/plot.h"
#include "scaling/runs.h"
#include "scaling/temp_dir.h"

namespace moba::scaling {
namespace {

namespace fs = std::filesystem;
using testing::read_file;
using testing::TempDir;
using testing::write_file;

struct Spec {
  std::string name, attention = "moba", status = "finished";
  int64_t layers = 3, params = 1'000'000, steps = 487, warmup_steps = 10;
  int tied = 1;
  double lr = 1e-3, loss = 2.0;
  bool with_val = true;
};

// A run folder as moba train writes it: run.json (with its "config") and metrics.jsonl
// with a first training loss of 5.5 and one final validation.
void write_run(const fs::path& root, const Spec& s) {
  RunInfo info;
  info.name = s.name;
  info.attention = s.attention;
  info.layers = info.heads = s.layers;
  info.width = 64 * s.layers;
  info.seq_len = 8192;
  info.vocab_size = 256;
  info.params_non_embedding = s.params;
  info.tokens_planned = 12.0 * static_cast<double>(s.params);
  info.status = s.status;
  info.lr = s.lr;
  info.steps = s.steps;
  info.warmup_steps = s.warmup_steps;
  info.tied_embeddings = s.tied;
  write_run_json(root / s.name, info);
  std::string lines = train_line({1, 32768, 5.5, 0, 0, 0}) + "\n";
  if (s.with_val) {
    ValPoint v;
    v.step = s.steps;
    v.tokens = info.tokens_planned;
    v.loss = s.loss;
    lines += val_line(v) + "\n";
  }
  write_file(root / s.name / "metrics.jsonl", lines);
}

// Loss = L0 + a (ln lr - ln lr*)^2: a parabola in ln(lr) with its minimum at lr*.
double bowl(double lr, double lr_star, double l0 = 2.0, double a = 0.05) {
  const double x = std::log(lr / lr_star);
  return l0 + a * x * x;
}

const double kMult[] = {0.25, 0.5, 1, 2, 4};

TEST(LrSearch, WarmupFractionIsRecoveredFromSteps) {
  EXPECT_DOUBLE_EQ(warmup_fraction_of(10, 487), 0.02);   // round(0.02 x 487) = 10
  EXPECT_DOUBLE_EQ(warmup_fraction_of(24, 1177), 0.02);  // round(23.54) = 24
  EXPECT_DOUBLE_EQ(warmup_fraction_of(49, 487), 0.1);
  EXPECT_DOUBLE_EQ(warmup_fraction_of(0, 487), 0.0);
  // 7 of 487: 0.014 and 0.015 both round to it (the nearer wins); the name settles it.
  EXPECT_DOUBLE_EQ(warmup_fraction_of(7, 487), 0.014);
  EXPECT_TRUE(std::isnan(warmup_fraction_of(-1, 487)));
  EXPECT_TRUE(std::isnan(warmup_fraction_of(10, 0)));
}

// A search's run names carry the fraction: runs of 487 and 1177 steps at 0.015 share a
// curve although the steps alone would say 0.014 for the first.
TEST(LrSearch, WarmupFractionFromTheRunName) {
  TempDir tmp;
  write_run(tmp.path(), {.name = "x-L3-moba-lr1x-tied-wu0.015", .steps = 487, .warmup_steps = 7});
  write_run(tmp.path(), {.name = "x-L3-moba-lr2x-tied-wu0.015", .steps = 487, .warmup_steps = 7,
                         .lr = 2e-3});
  write_run(tmp.path(), {.name = "x-L3-moba-lr4x-tied-wu0.5", .steps = 487, .warmup_steps = 7,
                         .lr = 4e-3});  // a name the steps contradict: the steps decide
  const LrSearch s = analyze_lr_search(read_runs(tmp.path()));
  ASSERT_EQ(s.curves.size(), 2u);
  EXPECT_DOUBLE_EQ(s.curves[0].warmup_fraction, 0.014);
  EXPECT_EQ(s.curves[0].points.size(), 1u);
  EXPECT_DOUBLE_EQ(s.curves[1].warmup_fraction, 0.015);
  EXPECT_EQ(s.curves[1].points.size(), 2u);
}

TEST(LrSearch, ParabolaOptimumRecovered) {
  TempDir tmp;
  // Optimum at 1.3e-3, between grid points 1e-3 and 2e-3.
  const double star = 1.3e-3;
  for (double m : kMult)
    write_run(tmp.path(), {.name = "r" + std::to_string(m), .lr = 1e-3 * m, .loss = bowl(1e-3 * m, star)});
  const LrSearch s = analyze_lr_search(read_runs(tmp.path()), {{3, 1e-3}});
  ASSERT_EQ(s.curves.size(), 1u);
  const LrCurve& cv = s.curves[0];
  ASSERT_EQ(cv.points.size(), 5u);
  EXPECT_EQ(cv.best, 2);  // 1e-3: ln distance 0.26 against 0.43 for 2e-3
  EXPECT_TRUE(cv.bracketed);
  EXPECT_NEAR(cv.fit_lr, star, 1e-9);  // three points of an exact parabola
  EXPECT_NEAR(cv.fit_loss, 2.0, 1e-9);
  EXPECT_DOUBLE_EQ(cv.warmup_fraction, 0.02);
  EXPECT_EQ(cv.tied, 1);
  EXPECT_EQ(cv.label(), "MoBA, tied, warm-up 0.02");
  // Flat within 1% of the best (2.0034 at 1e-3): 2e-3 (2.0093) is, 5e-4 (2.0456) is not.
  EXPECT_DOUBLE_EQ(cv.flat_lo, 1e-3);
  EXPECT_DOUBLE_EQ(cv.flat_hi, 2e-3);
  EXPECT_DOUBLE_EQ(cv.rule_lr, 1e-3);
  EXPECT_TRUE(cv.rule_in_flat());
  // A narrower tolerance narrows the range and leaves the rule's lr in it.
  const LrSearch narrow = analyze_lr_search(read_runs(tmp.path()), {{3, 1e-3}}, 0.001);
  EXPECT_DOUBLE_EQ(narrow.curves[0].flat_lo, 1e-3);
  EXPECT_DOUBLE_EQ(narrow.curves[0].flat_hi, 1e-3);
  EXPECT_TRUE(narrow.curves[0].rule_in_flat());
  const LrSearch off = analyze_lr_search(read_runs(tmp.path()), {{3, 4e-3}}, 0.001);
  EXPECT_FALSE(off.curves[0].rule_in_flat());
}

TEST(LrSearch, DivergedAndFailedRunsAreKeptAndNamed) {
  TempDir tmp;
  const double star = 1e-3;
  write_run(tmp.path(), {.name = "a", .lr = 2.5e-4, .loss = bowl(2.5e-4, star)});
  write_run(tmp.path(), {.name = "b", .lr = 5e-4, .loss = bowl(5e-4, star)});
  write_run(tmp.path(), {.name = "c", .lr = 1e-3, .loss = bowl(1e-3, star)});
  write_run(tmp.path(), {.name = "d", .lr = 2e-3, .loss = 7.0});  // above the initial 5.5
  write_run(tmp.path(), {.name = "e", .lr = 4e-3, .loss = kNaN});
  write_run(tmp.path(), {.name = "f", .status = "failed", .lr = 8e-3, .loss = 2.0});
  write_run(tmp.path(), {.name = "g", .status = "running", .lr = 1.6e-2, .loss = 3.0});
  write_run(tmp.path(), {.name = "h", .lr = 3.2e-2, .with_val = false});
  const LrSearch s = analyze_lr_search(read_runs(tmp.path()));
  ASSERT_EQ(s.curves.size(), 1u);
  const LrCurve& cv = s.curves[0];
  ASSERT_EQ(cv.points.size(), 8u);
  std::vector<std::string> states;
  for (const LrPoint& p : cv.points) states.push_back(p.state);
  EXPECT_EQ(states, (std::vector<std::string>{"ok", "ok", "ok", "diverged", "diverged", "failed",
                                              "running", "no validation"}));
  EXPECT_EQ(s.count("diverged"), 2);
  EXPECT_EQ(s.count("failed"), 1);
  // The best (1e-3) has a diverged neighbour: no parabola, a note says why; the flat range
  // stops at it.
  EXPECT_EQ(cv.best, 2);
  EXPECT_FALSE(cv.bracketed);
  EXPECT_TRUE(std::isnan(cv.fit_lr));
  EXPECT_DOUBLE_EQ(cv.flat_hi, 1e-3);
  ASSERT_FALSE(s.notes.empty());
  EXPECT_NE(s.notes[0].find("did not finish well"), std::string::npos) << s.notes[0];
  // Every run appears in the table with its state, and in the JSON with a null loss for NaN.
  const std::string md = lr_search_markdown(s);
  for (const char* needle : {"| d | L3 |", "| diverged |", "| e | L3 |", "| f | L3 |", "| failed |",
                             "| running |", "| no validation |", "| ok (best) |",
                             "8 runs in 1 curves", "2 diverged, 1 failed, 1 unfinished"})
    EXPECT_NE(md.find(needle), std::string::npos) << needle << "\n" << md;
  const nlohmann::json j = lr_search_json(s);
  EXPECT_TRUE(j["curves"][0]["points"][4]["loss"].is_null());
  EXPECT_EQ(j["curves"][0]["points"][4]["state"], "diverged");
  EXPECT_EQ(j["counts"]["diverged"], 2);
  EXPECT_FALSE(j["curves"][0]["bracketed"].get<bool>());
}

TEST(LrSearch, OptimumAtTheEdgeIsNotBracketed) {
  TempDir tmp;
  for (double m : kMult)  // the optimum far above the grid: the loss falls to its last point
    write_run(tmp.path(), {.name = "r" + std::to_string(m), .lr = 1e-3 * m, .loss = bowl(1e-3 * m, 0.1)});
  const LrSearch s = analyze_lr_search(read_runs(tmp.path()));
  EXPECT_EQ(s.curves[0].best, 4);
  EXPECT_FALSE(s.curves[0].bracketed);
  EXPECT_NE(s.notes[0].find("at the edge of the grid"), std::string::npos) << s.notes[0];
  EXPECT_NE(lr_search_markdown(s).find("not bracketed"), std::string::npos);
}

// Two sizes, two attention types, tied and untied: curves by (size, attention, embeddings,
// warm-up), and the rule lr* = c N^-e recovered across sizes from the fitted optima.
TEST(LrSearch, RuleAcrossSizes) {
  TempDir tmp;
  const double c = 0.5, e = 0.35;
  const int64_t sizes[][2] = {{3, 1'330'000}, {4, 3'210'000}};
  for (const auto& [layers, n] : sizes)
    for (const char* att : {"full", "moba"})
      for (int tied : {1, 0}) {
        const double star = c * std::pow(static_cast<double>(n), -e) * (tied ? 1.0 : 0.8);
        for (double m : kMult) {
          const double lr = 2e-3 * m;  // 5e-4 ... 8e-3: every optimum inside
          write_run(tmp.path(), {.name = "L" + std::to_string(layers) + att + std::to_string(tied) +
                                         "-" + std::to_string(m),
                                 .attention = att,
                                 .layers = layers,
                                 .params = n,
                                 .steps = layers == 3 ? 487 : 1177,
                                 .warmup_steps = layers == 3 ? 10 : 24,
                                 .tied = tied,
                                 .lr = lr,
                                 .loss = bowl(lr, star, 3.0 - 0.1 * static_cast<double>(layers))});
        }
      }
  const LrSearch s = analyze_lr_search(read_runs(tmp.path()), {}, 0.01, e / 2);
  ASSERT_EQ(s.curves.size(), 8u);
  // Sorted by size, attention, tied first.
  EXPECT_EQ(s.curves[0].layers, 3);
  EXPECT_EQ(s.curves[0].attention, "full");
  EXPECT_EQ(s.curves[0].tied, 1);
  EXPECT_EQ(s.curves[1].tied, 0);
  EXPECT_EQ(s.curves[7].layers, 4);
  for (const LrCurve& cv : s.curves) {
    ASSERT_TRUE(cv.bracketed) << cv.label();
    const double star =
        c * std::pow(static_cast<double>(cv.params_non_embedding), -e) * (cv.tied ? 1.0 : 0.8);
    EXPECT_NEAR(cv.fit_lr / star, 1.0, 1e-9) << cv.label();
    EXPECT_DOUBLE_EQ(cv.warmup_fraction, 0.02);  // one curve label across both sizes
  }
  // Every curve: 8 optima at 2 sizes; the tied/untied factor is the same at both sizes, so
  // the exponent is exact and the coefficient their geometric mean.
  ASSERT_EQ(s.rules.size(), 1u + 4u);
  EXPECT_EQ(s.rules[0].optima, 8);
  EXPECT_EQ(s.rules[0].sizes, 2);
  EXPECT_NEAR(s.rules[0].e_n, e, 1e-9);
  EXPECT_NEAR(s.rules[0].c_n, c * std::sqrt(0.8), 1e-9);
  // Per line: exact, tied with c and untied with 0.8 c.
  for (size_t i = 1; i < s.rules.size(); ++i) {
    const bool tied = s.rules[i].over.find("untied") == std::string::npos;
    EXPECT_NEAR(s.rules[i].e_n, e, 1e-9) << s.rules[i].over;
    EXPECT_NEAR(s.rules[i].c_n, c * (tied ? 1.0 : 0.8), 1e-9) << s.rules[i].over;
  }
  // In C = 6ND with D = 12 N: lr* = c (C / 72)^(-e/2), so the [lr] exponent is e / 2.
  EXPECT_NEAR(s.rules[0].e_c, e / 2, 1e-9);
  EXPECT_NEAR(s.rules[0].c_c, c * std::sqrt(0.8) * std::pow(72.0, e / 2), 1e-9 * s.rules[0].c_c);
  // At that exponent, kept instead of fitted, the same coefficient; at another one, the
  // coefficient that matches the optima on average in log space.
  EXPECT_NEAR(s.rules[0].c_fixed / s.rules[0].c_c, 1.0, 1e-9);
  const LrSearch other = analyze_lr_search(read_runs(tmp.path()), {}, 0.01, 0.125);
  double mean = 0;
  for (const LrCurve& cv : other.curves)
    mean += std::log(cv.fit_lr * std::pow(6.0 * static_cast<double>(cv.params_non_embedding) * cv.tokens, 0.125)) / 8;
  EXPECT_NEAR(other.rules[0].c_fixed, std::exp(mean), 1e-9 * std::exp(mean));
  const std::string md = lr_search_markdown(s);
  EXPECT_NE(md.find("| every curve | 8 | 2 |"), std::string::npos) << md;
}

TEST(LrSearch, RunsWithoutALearningRateAreRefusedOrLeftOut) {
  TempDir tmp;
  RunInfo info;
  info.name = "old";
  info.attention = "full";
  info.layers = info.heads = 2;
  info.width = 12;
  info.seq_len = 64;
  info.params_non_embedding = 100;
  info.tokens_planned = 2000;
  info.status = "finished";
  write_run_json(tmp.path() / "old", info);
  testing::expect_error([&] { analyze_lr_search(read_runs(tmp.path())); },
                        "records its learning rate");
  write_run(tmp.path(), {.name = "new"});
  const LrSearch s = analyze_lr_search(read_runs(tmp.path()));
  EXPECT_EQ(s.curves.size(), 1u);
  EXPECT_NE(s.notes.front().find("1 run(s) without a learning rate"), std::string::npos);
}

TEST(LrSearch, RuleFromPlanJson) {
  TempDir tmp;
  EXPECT_TRUE(read_rule_lrs(tmp.path()).empty());
  write_file(tmp.path() / "plan.json",
             R"({"runs": [{"layers": 3, "lr_rule": 0.005}, {"layers": 4, "lr_rule": 0.004},
                          {"layers": 5, "lr": 0.1}]})");
  const auto m = read_rule_lrs(tmp.path());
  ASSERT_EQ(m.size(), 2u);
  EXPECT_DOUBLE_EQ(m.at(3), 0.005);
  EXPECT_DOUBLE_EQ(m.at(4), 0.004);
  EXPECT_TRUE(std::isnan(read_rule_exponent(tmp.path())));
  write_file(tmp.path() / "plan.json", R"({"lr_rule": {"coefficient": 0.3, "exponent": 0.125}})");
  EXPECT_DOUBLE_EQ(read_rule_exponent(tmp.path()), 0.125);
  write_file(tmp.path() / "plan.json", "not json");
  EXPECT_TRUE(read_rule_lrs(tmp.path()).empty());
  EXPECT_TRUE(std::isnan(read_rule_exponent(tmp.path())));
  // A results folder keeps plan.json one folder above runs/ (scripts/study-results.sh, the
  // device's packed sweeps): found there, as the report's planned-time section finds it.
  std::filesystem::remove(tmp.path() / "plan.json");
  std::filesystem::create_directories(tmp.path() / "runs");
  write_file(tmp.path() / "plan.json",
             R"({"runs": [{"layers": 3, "lr_rule": 0.005}], "lr_rule": {"exponent": 0.125}})");
  EXPECT_DOUBLE_EQ(read_rule_lrs(tmp.path() / "runs").at(3), 0.005);
  EXPECT_DOUBLE_EQ(read_rule_exponent(tmp.path() / "runs"), 0.125);
}

TEST(LrSearch, WritesTableJsonAndFigure) {
  TempDir tmp;
  for (int64_t layers : {3, 4})
    for (double m : kMult)
      write_run(tmp.path() / "runs",
                {.name = "L" + std::to_string(layers) + "-" + std::to_string(m),
                 .layers = layers,
                 .params = layers * 1'000'000,
                 .lr = 1e-3 * m,
                 .loss = m == 4 ? kNaN : bowl(1e-3 * m, 1.2e-3)});
  const auto files = write_lr_search(tmp.path() / "runs", tmp.path() / "out");
  ASSERT_GE(files.size(), 2u);
  EXPECT_EQ(files[0].filename(), "lr_search.md");
  EXPECT_EQ(files[1].filename(), "lr_search.json");
  const nlohmann::json j = nlohmann::json::parse(read_file(files[1]));
  EXPECT_EQ(j["curves"].size(), 2u);
  EXPECT_EQ(j["counts"]["diverged"], 2);
  EXPECT_NEAR(j["rules"][0]["n"]["exponent"].get<double>(), 0.0, 1e-9);  // the same optimum
  if (!plotting_available()) return;
  ASSERT_EQ(files.size(), 4u);
  EXPECT_EQ(read_file(files[2]).substr(0, 8), "\x89PNG\r\n\x1a\n");
  EXPECT_NE(read_file(files[3]).find("<svg"), std::string::npos);
  EXPECT_GT(fs::file_size(files[2]), 10000u);
}

}  // namespace
}  // namespace moba::scaling
