// The whole study on synthetic run folders with a known frontier: the fits recover it,
// the bootstrap brackets it, flagged and failed runs are handled, errors are clear.
#include <gtest/gtest.h>

#include <cmath>

#include "scaling/study.h"
#include "scaling/synthetic.h"
#include "scaling/temp_dir.h"

namespace moba::scaling {
namespace {

using testing::expect_error;
using testing::TempDir;
using testing::write_file;

// An even ladder (parameters x1.4 per size) of runs trained to 20 tokens per parameter,
// the law's compute-optimal ratio, so that every run ends on the true frontier.
SyntheticSpec even_ladder() {
  SyntheticSpec spec;
  spec.heads.clear();
  for (int i = 0; i < 10; ++i) {
    spec.heads.push_back(4);
    spec.params.push_back(static_cast<int64_t>(3e6 * std::pow(1.4, i)));
  }
  spec.noise = 0.002;
  spec.evals = 30;
  spec.moba = spec.full;
  return spec;
}

TEST(Study, FitRecoversTheSyntheticFrontierWithin2Percent) {
  TempDir tmp;
  const SyntheticSpec spec = even_ladder();
  write_synthetic_runs(tmp.path(), spec);
  StudyOptions o;
  o.bootstrap = 0;
  o.computes = {Compute::k6nd};
  const Study s = run_study(read_runs(tmp.path()), o);
  EXPECT_EQ(s.runs.size(), 20u);
  EXPECT_EQ(s.bucket_size, 2048);
  ASSERT_EQ(s.attentions, (std::vector<std::string>{"moba", "full"}));
  const PowerLaw truth = synthetic_frontier(spec.full);
  const std::vector<double> factors = synthetic_bucket_factors(spec);
  for (const std::string& a : s.attentions) {
    const FitResult* lm = s.find(Metric::lm(), a, Compute::k6nd);
    ASSERT_TRUE(lm && lm->fit) << a;
    EXPECT_NEAR(lm->fit->law.A / truth.A, 1, 0.02) << a;
    EXPECT_NEAR(lm->fit->law.alpha / truth.alpha, 1, 0.02) << a;
    // Bucket i is s_i x LM loss: its frontier is s_i x the LM frontier.
    for (int i = 0; i < 4; ++i) {
      const FitResult* b = s.find(Metric::position_bucket(i), a, Compute::k6nd);
      ASSERT_TRUE(b && b->fit);
      EXPECT_NEAR(b->fit->law.A / (factors[static_cast<size_t>(i)] * truth.A), 1, 0.02) << i;
      EXPECT_NEAR(b->fit->law.alpha / truth.alpha, 1, 0.02) << i;
    }
  }
  // Every frontier point comes from one of the runs and lies on or above the true law
  // (up to the noise).
  for (const FrontierPoint& p : s.find(Metric::lm(), "full", Compute::k6nd)->frontier) {
    EXPECT_EQ(s.runs[static_cast<size_t>(p.run)].info.attention, "full");
    EXPECT_GT(p.loss, truth(p.c) * 0.99);
  }
}

TEST(Study, IrreducibleFitRecoversE) {
  TempDir tmp;
  SyntheticSpec spec = even_ladder();
  spec.full.E = spec.moba.E = 0.8;
  spec.attentions = {"full"};
  write_synthetic_runs(tmp.path(), spec);
  StudyOptions o;
  o.bootstrap = 0;
  o.computes = {Compute::k6nd};
  o.metrics = {Metric::lm()};
  o.irreducible = true;
  const Study s = run_study(read_runs(tmp.path()), o);
  const FitResult* f = s.find(Metric::lm(), "full", Compute::k6nd);
  ASSERT_TRUE(f && f->fit);
  const PowerLaw truth = synthetic_frontier(spec.full);
  EXPECT_NEAR(f->fit->law.E, 0.8, 0.08);
  EXPECT_NEAR(f->fit->law.alpha / truth.alpha, 1, 0.1);
  EXPECT_LT(f->fit->rms_log_residual, 0.01);
}

TEST(Study, BootstrapIntervalsContainTheTrueValue) {
  TempDir tmp;
  const SyntheticSpec spec = even_ladder();
  write_synthetic_runs(tmp.path(), spec);
  StudyOptions o;
  o.bootstrap = 300;
  o.computes = {Compute::k6nd};
  o.metrics = {Metric::lm(), Metric::position_bucket(2)};
  const Study s = run_study(read_runs(tmp.path()), o);
  const PowerLaw truth = synthetic_frontier(spec.full);
  const double s2 = synthetic_bucket_factors(spec)[2];
  for (const FitResult& f : s.fits) {
    ASSERT_TRUE(f.bootstrap.has_value());
    EXPECT_GT(f.bootstrap->replicas_ok, 290);
    const double A = f.metric == Metric::lm() ? truth.A : s2 * truth.A;
    EXPECT_TRUE(f.bootstrap->A.contains(A))
        << f.metric.id() << " " << f.attention << ": A " << A << " not in ["
        << f.bootstrap->A.lo << ", " << f.bootstrap->A.hi << "]";
    EXPECT_TRUE(f.bootstrap->alpha.contains(truth.alpha))
        << f.metric.id() << " " << f.attention << ": alpha " << truth.alpha << " not in ["
        << f.bootstrap->alpha.lo << ", " << f.bootstrap->alpha.hi << "]";
  }
}

TEST(Study, RunningRunsAreFlaggedAndFailedRunsLeftOut) {
  TempDir tmp;
  SyntheticSpec spec;
  spec.running_runs = 1;
  write_synthetic_runs(tmp.path(), spec);
  // Mark one run failed by rewriting its status.
  auto runs = read_runs(tmp.path());
  runs[0].info.status = "failed";
  StudyOptions o;
  o.bootstrap = 0;
  o.metrics = {Metric::lm()};
  const Study s = run_study(runs, o);
  EXPECT_EQ(s.runs.size(), 9u);
  int running = 0;
  for (const scaling::Run& r : s.runs) running += r.running();
  EXPECT_EQ(running, 1);
  bool noted_running = false, noted_failed = false;
  for (const std::string& n : s.notes) {
    noted_running |= n.find("still running") != std::string::npos;
    noted_failed |= n.find("failed: left out") != std::string::npos;
  }
  EXPECT_TRUE(noted_running);
  EXPECT_TRUE(noted_failed);
  const nlohmann::json j = to_json(s);
  int flagged = 0;
  for (const auto& r : j["runs"]) flagged += r["flagged"].get<bool>();
  EXPECT_EQ(flagged, 1);
  o.include_failed = true;
  EXPECT_EQ(run_study(runs, o).runs.size(), 10u);
}

TEST(Study, JsonAndFormulasAsThePaperWritesThem) {
  EXPECT_EQ(formula("LM loss", "moba", {2.625, 0.063, 0}, false), "LM loss (MoBA) = 2.625 x C^-0.063");
  EXPECT_EQ(formula("Trailing loss", "full", {1.464, 0.097, 0}, false),
            "Trailing loss (Full) = 1.464 x C^-0.097");
  EXPECT_EQ(formula("LM loss", "full", {2.0, 0.1, 1.25}, true), "LM loss (Full) = 1.250 + 2.000 x C^-0.100");
  TempDir tmp;
  write_synthetic_runs(tmp.path(), SyntheticSpec{});
  StudyOptions o;
  o.bootstrap = 20;
  o.metrics = {Metric::lm(), Metric::trailing()};
  const nlohmann::json j = to_json(run_study(read_runs(tmp.path()), o));
  ASSERT_EQ(j["fits"].size(), 8u);  // 2 metrics x 2 conventions x 2 attention types
  const auto& f = j["fits"][0];
  EXPECT_EQ(f["metric"], "lm");
  EXPECT_EQ(f["attention"], "moba");
  EXPECT_EQ(f["compute"], "6nd");
  EXPECT_EQ(f["formula"].get<std::string>().rfind("LM loss (MoBA) = ", 0), 0u);
  EXPECT_EQ(f["bootstrap"]["A"].size(), 2u);
  EXPECT_GT(f["frontier"].size(), 10u);
  EXPECT_EQ(j["fits"][3]["compute"], "exec");
}

TEST(Study, UnknownMetricNamesWhatTheRunsCarry) {
  TempDir tmp;
  write_synthetic_runs(tmp.path(), SyntheticSpec{});
  StudyOptions o;
  o.metrics = {Metric::position_bucket(7)};
  expect_error([&] { run_study(read_runs(tmp.path()), o); },
               "'bucket:7' is not in any run's validation points; they carry: lm, bucket:0, "
               "bucket:1, bucket:2, bucket:3, trailing");
}

TEST(Study, TooFewPointsGiveANoteNotACrash) {
  TempDir tmp;
  SyntheticSpec spec;
  spec.heads = {4};
  spec.attentions = {"moba"};
  spec.evals = 2;
  write_synthetic_runs(tmp.path(), spec);
  StudyOptions o;
  o.metrics = {Metric::lm()};
  o.computes = {Compute::k6nd};
  const Study s = run_study(read_runs(tmp.path()), o);
  ASSERT_EQ(s.fits.size(), 1u);
  // One run: fitting starts at its end, a single frontier point.
  EXPECT_FALSE(s.fits[0].fit.has_value());
  EXPECT_NE(s.fits[0].why_no_fit.find("at least 2"), std::string::npos);
  o.fit_from = FitFrom::kAll;
  EXPECT_TRUE(run_study(read_runs(tmp.path()), o).fits[0].fit.has_value());
}

// Two hand-made runs: the small one ends at C = 1e-3 with loss 2.0, the big one is at 2.5
// there and reaches 1.5 at 1e-2. Just past 1e-3 the frontier is the big run at about 2.42, a 21% rise: noted.
TEST(Study, ARisingFrontierIsNoted) {
  TempDir tmp;
  for (int r = 0; r < 2; ++r) {
    RunInfo info;
    info.name = r == 0 ? "small" : "big";
    info.attention = "full";
    info.status = "finished";
    info.layers = info.heads = 2 + r;
    info.width = 64;
    info.seq_len = 256;
    info.params_non_embedding = 1000 * (r + 1);
    info.tokens_planned = 1e6;
    write_run_json(tmp.path() / info.name, info);
    const std::vector<std::pair<double, double>> pts =
        r == 0 ? std::vector<std::pair<double, double>>{{1e-4, 3.0}, {1e-3, 2.0}}
               : std::vector<std::pair<double, double>>{{5e-4, 2.6}, {1e-3, 2.5}, {1e-2, 1.5}};
    std::string lines;
    int step = 0;
    for (const auto& [c, l] : pts) {
      ValPoint p;
      p.step = ++step;
      p.tokens = step * 1000.0;
      p.flops_6nd = p.flops_exec = c * kFlopsPerPflopsDay;
      p.loss = l;
      lines += val_line(p) + "\n";
    }
    write_file(tmp.path() / info.name / "metrics.jsonl", lines);
  }
  StudyOptions o;
  o.bootstrap = 0;
  o.computes = {Compute::k6nd};
  const Study s = run_study(read_runs(tmp.path()), o);
  bool noted = false;
  for (const std::string& n : s.notes) noted |= n.find("rises by 21% at C = 0.00115") != std::string::npos;
  EXPECT_TRUE(noted);
  // Several rising fits (both compute conventions here): one note for all, not one per fit.
  o.computes = {Compute::k6nd, Compute::kExec};
  const Study both = run_study(read_runs(tmp.path()), o);
  int rise_notes = 0;
  for (const std::string& n : both.notes) {
    if (n.find("rises") == std::string::npos) continue;
    ++rise_notes;
    EXPECT_NE(n.find("in 2 of 2 fits"), std::string::npos) << n;
    EXPECT_NE(n.find("rises by 21% at C = 0.00115"), std::string::npos) << n;
  }
  EXPECT_EQ(rise_notes, 1);
}

}  // namespace
}  // namespace moba::scaling
