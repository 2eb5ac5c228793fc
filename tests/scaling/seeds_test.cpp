// Seed noise (seeds.h): Student t quantiles against published values, mean, sd and t
// intervals on hand-computed data, the verdict's choice of the wider interval and its
// wording, fits on the lowest seed only, pairing within a seed, and the report's section.
#include "scaling/seeds.h"

#include <gtest/gtest.h>

#include <cmath>

#include "scaling/report.h"
#include "scaling/study.h"
#include "scaling/synthetic.h"
#include "scaling/temp_dir.h"

namespace moba::scaling {
namespace {

using testing::expect_error;
using testing::TempDir;
using Runs = std::vector<scaling::Run>;  // (inside a TEST, Run is gtest's method)

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// Published two-sided critical values of Student's t (any statistics table; R's qt()).
TEST(StudentT, QuantilesMatchPublishedValues) {
  struct Case {
    double p;
    int64_t dof;
    double t;
  };
  for (const Case& c : {Case{0.975, 1, 12.7062047}, Case{0.975, 2, 4.30265273},
                        Case{0.975, 3, 3.18244631}, Case{0.975, 4, 2.77644511},
                        Case{0.975, 5, 2.57058184}, Case{0.975, 9, 2.26215716},
                        Case{0.95, 10, 1.81246112}, Case{0.995, 5, 4.03214298},
                        Case{0.9, 1, 3.07768354}, Case{0.975, 30, 2.04227246},
                        Case{0.975, 1000, 1.96233908}}) {
    SCOPED_TRACE(std::to_string(c.p) + ", dof " + std::to_string(c.dof));
    EXPECT_NEAR(student_t_quantile(c.p, c.dof), c.t, 1e-7);
    EXPECT_NEAR(student_t_quantile(1.0 - c.p, c.dof), -c.t, 1e-7);  // symmetric
    EXPECT_NEAR(student_t_cdf(c.t, c.dof), c.p, 1e-9);
  }
  EXPECT_EQ(student_t_quantile(0.5, 3), 0.0);
  // Closed forms: the Cauchy (1 dof) and 2 dof distributions.
  EXPECT_NEAR(student_t_cdf(1.0, 1), 0.75, 1e-15);
  EXPECT_NEAR(student_t_cdf(2.0, 2), 0.5 + 1.0 / std::sqrt(6.0), 1e-15);
  EXPECT_NEAR(student_t_cdf(-2.0, 2), 0.5 - 1.0 / std::sqrt(6.0), 1e-15);
  EXPECT_EQ(student_t_cdf(0.0, 7), 0.5);
  EXPECT_EQ(student_t_cdf(INFINITY, 4), 1.0);
  expect_error([] { student_t_quantile(0.975, 0); }, "degrees of freedom must be >= 1, got 0");
  expect_error([] { student_t_quantile(1.0, 3); }, "probability must be in (0, 1), got 1");
  expect_error([] { student_t_quantile(0.0, 3); }, "probability must be in (0, 1), got 0");
}

TEST(TInterval, MeanSdAndIntervalByHand) {
  // {1, 2, 3, 6}: mean 3, squared deviations 4 + 1 + 0 + 9 = 14, sd = sqrt(14 / 3),
  // half-width t(0.975, 3) x sd / 2.
  const TInterval a = t_interval({1, 2, 3, 6});
  EXPECT_EQ(a.n, 4);
  EXPECT_DOUBLE_EQ(a.mean, 3.0);
  EXPECT_NEAR(a.sd, 2.1602468994692865, 1e-12);
  const double half = 3.18244631 * 2.1602468994692865 / 2.0;
  EXPECT_NEAR(a.lo, 3.0 - half, 1e-7);
  EXPECT_NEAR(a.hi, 3.0 + half, 1e-7);
  // Two seeds: sd = |x1 - x2| / sqrt 2, half-width t(0.975, 1) x |x1 - x2| / 2 = 12.706 x 0.1.
  const TInterval b = t_interval({0.1, 0.3});
  EXPECT_NEAR(b.mean, 0.2, 1e-15);
  EXPECT_NEAR(b.sd, 0.2 / std::sqrt(2.0), 1e-15);
  EXPECT_NEAR(b.hi - b.mean, 1.27062047, 1e-7);
  EXPECT_NEAR(b.mean - b.lo, 1.27062047, 1e-7);
  // A 90% interval is narrower: t(0.95, 3) = 2.35336343.
  const TInterval c = t_interval({1, 2, 3, 6}, 0.90);
  EXPECT_NEAR(c.hi - c.mean, 2.35336343 * 2.1602468994692865 / 2.0, 1e-7);
  // Equal values: no spread.
  const TInterval d = t_interval({0.5, 0.5, 0.5});
  EXPECT_EQ(d.sd, 0.0);
  EXPECT_EQ(d.lo, 0.5);
  EXPECT_EQ(d.hi, 0.5);
  expect_error([] { t_interval({1.0}); }, "a t interval needs at least 2 values, got 1");
}

// ---- The verdict's interval -----------------------------------------------------------

PairedStats window_stats(double lo, double hi) {
  PairedStats s;
  s.windows = 16;
  s.diff = {(lo + hi) / 2, lo, hi};
  s.ratio = {1 + (lo + hi) / 4, 1 + lo / 2, 1 + hi / 2};  // losses near 2
  return s;
}

SizeSeeds seeds_with(std::vector<double> diff) {
  SizeSeeds g;
  for (size_t i = 0; i < diff.size(); ++i) {
    g.seeds.push_back(static_cast<int64_t>(i + 1));
    g.ratio.push_back(1 + diff[i] / 2);
  }
  g.diff = diff;
  g.diff_ci = t_interval(g.diff);
  g.ratio_ci = t_interval(g.ratio);
  return g;
}

TEST(VerdictInterval, TheWiderIntervalIsUsed) {
  // Seeds 0.01, 0.03, 0.02: mean 0.02, sd 0.01, t interval 0.02 +- 4.3027 x 0.01 / sqrt 3.
  const SizeSeeds g = seeds_with({0.01, 0.03, 0.02});
  EXPECT_NEAR(g.diff_ci.mean, 0.02, 1e-15);
  EXPECT_NEAR(g.diff_ci.sd, 0.01, 1e-15);
  EXPECT_NEAR(g.diff_ci.hi, 0.02 + 4.30265273 * 0.01 / std::sqrt(3.0), 1e-9);
  // Narrow windows (width 0.01 < 0.0497): the seeds' t interval.
  const VerdictInterval a = verdict_interval("L3", window_stats(0.015, 0.025), &g);
  EXPECT_TRUE(a.from_seeds);
  EXPECT_EQ(a.seeds, 3);
  EXPECT_EQ(a.windows, 16);
  EXPECT_EQ(a.size, "L3");
  EXPECT_DOUBLE_EQ(a.diff.lo, g.diff_ci.lo);
  EXPECT_DOUBLE_EQ(a.diff.hi, g.diff_ci.hi);
  EXPECT_DOUBLE_EQ(a.diff.value, 0.02);
  EXPECT_DOUBLE_EQ(a.ratio.lo, g.ratio_ci.lo);  // the ratio from the same source
  EXPECT_DOUBLE_EQ(a.ratio.hi, g.ratio_ci.hi);
  // Wide windows (width 0.2): the window bootstrap, though the size has seeds.
  const VerdictInterval b = verdict_interval("L3", window_stats(-0.08, 0.12), &g);
  EXPECT_FALSE(b.from_seeds);
  EXPECT_EQ(b.seeds, 3);
  EXPECT_DOUBLE_EQ(b.diff.lo, -0.08);
  EXPECT_DOUBLE_EQ(b.ratio.hi, 1.06);
  // A tie keeps the bootstrap.
  const VerdictInterval tie = verdict_interval("L3", window_stats(g.diff_ci.lo, g.diff_ci.hi), &g);
  EXPECT_FALSE(tie.from_seeds);
  // No seeds: the bootstrap; windows not paired: the seeds.
  const VerdictInterval c = verdict_interval("L4", window_stats(0.0, 0.01), nullptr);
  EXPECT_FALSE(c.from_seeds);
  EXPECT_EQ(c.seeds, 0);
  const VerdictInterval d = verdict_interval("L4", std::nullopt, &g);
  EXPECT_TRUE(d.from_seeds);
  EXPECT_EQ(d.windows, 0);
  expect_error([] { verdict_interval("L5", std::nullopt, nullptr); },
               "L5 has neither a window bootstrap nor seed replicas");
}

TEST(VerdictInterval, TheSentenceSaysWhichIntervalEachSizeUsed) {
  const SizeSeeds g = seeds_with({0.01, 0.03, 0.02});
  // Every size with seeds, the t interval wider at both.
  const std::string all = paired_verdict(std::vector<VerdictInterval>{
      verdict_interval("L3", window_stats(0.015, 0.025), &g),
      verdict_interval("L4", window_stats(0.016, 0.024), &g)});
  EXPECT_TRUE(has(all, "(2 sizes; 95% intervals, at each size with seeds the wider of the t "
                       "interval over seeds and the window bootstrap: the t interval over 3 "
                       "seeds (wider than the window bootstrap) at L3, L4)"))
      << all;
  EXPECT_TRUE(has(all, "Every size has seed replicas")) << all;
  EXPECT_FALSE(has(all, "not in these intervals")) << all;
  // The bound is the chosen (ratio) interval's: |1 + t interval of the ratio| - 1.
  char bound[32];
  std::snprintf(bound, sizeof bound, "within %.1f%%",
                100 * std::max(std::abs(g.ratio_ci.lo - 1), std::abs(g.ratio_ci.hi - 1)));
  EXPECT_TRUE(has(all, bound)) << all << "\n" << bound;
  EXPECT_TRUE(has(all, "no interval excludes equality")) << all;  // the t interval holds 0
  // Mixed: one size with seeds where the windows are wider, one without seeds.
  const std::string mixed = paired_verdict(std::vector<VerdictInterval>{
      verdict_interval("L3", window_stats(-0.08, 0.12), &g),
      verdict_interval("L4", window_stats(0.01, 0.03), nullptr)});
  EXPECT_TRUE(has(mixed, "the window bootstrap over 16 windows (wider than the t interval over "
                         "3 seeds) at L3; the window bootstrap over 16 windows at L4"))
      << mixed;
  EXPECT_TRUE(has(mixed, "the interval excludes equality at 0 sizes where MoBA is lower and 1 "
                         "where it is higher"))
      << mixed;
  EXPECT_TRUE(has(mixed, "in the intervals of the 1 size with seed replicas only")) << mixed;
  EXPECT_EQ(mixed.rfind("MoBA's LM loss is within ", 0), 0u) << mixed;  // not one-sided everywhere
  // Both sizes lower beyond their intervals: said first, with the point estimates' range.
  const std::string lower = paired_verdict(std::vector<VerdictInterval>{
      verdict_interval("L3", window_stats(-0.30, -0.20), nullptr),
      verdict_interval("L4", window_stats(-0.06, -0.04), nullptr)});
  EXPECT_EQ(lower.rfind("MoBA's LM loss is lower than full attention's by ", 0), 0u) << lower;
  EXPECT_TRUE(has(lower, "(point estimates), and within ")) << lower;
  EXPECT_TRUE(has(lower, "at 2 sizes where MoBA is lower and 0 where it is higher")) << lower;
  // No seeds anywhere: the sentence as before seeds existed.
  const std::string none = paired_verdict(std::vector<PairedStats>{window_stats(0.01, 0.03)});
  EXPECT_TRUE(has(none, "(1 size, 95% bootstrap intervals over 16 validation windows, paired by "
                        "window)"))
      << none;
  EXPECT_TRUE(has(none, "seed-to-seed variation of training is not in these intervals")) << none;
}

// ---- Runs ---------------------------------------------------------------------------------

// A run of one validation point whose windows are `base` + shift (a constant shift makes
// the window bootstrap of a pair exact: no spread).
scaling::Run hand_run(const std::string& attention, int64_t layers, int64_t seed, double mean, double shift) {
  scaling::Run r;
  r.info.name = "h-L" + std::to_string(layers) + "-" + attention +
                (seed >= 0 ? "-s" + std::to_string(seed) : "");
  r.info.attention = attention;
  r.info.status = "finished";
  r.info.layers = r.info.heads = layers;
  r.info.width = 8 * layers;
  r.info.head_dim = 8;
  r.info.seq_len = 64;
  r.info.params_non_embedding = 1000 * layers * layers;
  r.info.tokens_planned = 1e5;
  r.info.lr = 1e-3;
  r.info.steps = 100;
  r.info.warmup_steps = 2;
  r.info.tied_embeddings = 1;
  r.info.seed = seed;
  for (int k = 1; k <= 2; ++k) {
    ValPoint p;
    p.step = 50 * k;
    p.tokens = 5e4 * k;
    p.flops_6nd = 6.0 * static_cast<double>(r.info.params_non_embedding) * p.tokens;
    p.flops_exec = 2 * p.flops_6nd;
    const double m = mean + (k == 1 ? 0.5 : 0.0) + shift;
    p.window_losses = {m - 0.1, m + 0.1, m - 0.05, m + 0.05};
    p.windows = 4;
    p.loss = m;
    p.windows_hash = "w" + std::to_string(seed);  // the windows of the seed (synthetic task)
    r.val.push_back(p);
  }
  return r;
}

TEST(Seeds, PairsAreMadeWithinASeed) {
  Runs runs;
  for (int64_t seed : {1, 2})
    for (const char* a : {"full", "moba"}) runs.push_back(hand_run(a, 2, seed, 2.0, 0.0));
  const std::vector<SizePair> pairs = pair_by_size(runs);
  ASSERT_EQ(pairs.size(), 2u);  // not 2 x 2
  for (const SizePair& p : pairs) EXPECT_EQ(p.full->info.seed, p.moba->info.seed);
  // Runs without a recorded seed pair as before: each full run with each MoBA run.
  Runs old = {hand_run("full", 2, -1, 2, 0), hand_run("full", 2, -1, 2.1, 0),
                          hand_run("moba", 2, -1, 2, 0)};
  old[1].info.name += "-b";
  EXPECT_EQ(pair_by_size(old).size(), 2u);
}

TEST(Seeds, SeedNoiseOfASize) {
  // Seeds 3, 1, 2 (out of order); full losses 1.9, 2.0, 2.1; MoBA - full 0.02, 0.01, 0.03.
  Runs runs;
  const double full[] = {1.9, 2.0, 2.1}, diff[] = {0.02, 0.01, 0.03};
  const int64_t seed[] = {3, 1, 2};
  for (int i = 0; i < 3; ++i) {
    runs.push_back(hand_run("full", 2, seed[i], full[i], 0.0));
    runs.push_back(hand_run("moba", 2, seed[i], full[i], diff[i]));
  }
  runs.push_back(hand_run("full", 3, 1, 1.8, 0.0));  // another size, one seed: no seed noise
  runs.push_back(hand_run("moba", 3, 1, 1.8, 0.01));
  const std::vector<SizePair> pairs = pair_by_size(runs);
  const std::vector<SizeSeeds> noise = seed_noise(pairs);
  ASSERT_EQ(noise.size(), 1u);
  const SizeSeeds& g = noise[0];
  EXPECT_EQ(g.seeds, (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(g.full.losses, (std::vector<double>{2.0, 2.1, 1.9}));
  EXPECT_NEAR(g.full.stats.mean, 2.0, 1e-12);
  EXPECT_NEAR(g.full.stats.sd, 0.1, 1e-12);
  ASSERT_EQ(g.diff.size(), 3u);
  EXPECT_NEAR(g.diff[0], 0.01, 1e-12);
  EXPECT_NEAR(g.diff[1], 0.03, 1e-12);
  EXPECT_NEAR(g.diff[2], 0.02, 1e-12);
  EXPECT_NEAR(g.diff_ci.mean, 0.02, 1e-12);
  EXPECT_NEAR(g.diff_ci.hi - g.diff_ci.mean, 4.30265273 * 0.01 / std::sqrt(3.0), 1e-9);
  EXPECT_NEAR(g.ratio[0], 2.01 / 2.0, 1e-12);
  EXPECT_EQ(pairs[g.pairs.front()].full->info.seed, 1);  // by seed: the lowest first
  // A size whose pairs repeat a seed is left out, with a note.
  Runs twice = runs;
  twice.push_back(hand_run("full", 2, 1, 2.0, 0.0));
  twice.back().info.name += "-again";
  std::vector<std::string> notes;
  EXPECT_TRUE(seed_noise(pair_by_size(twice), &notes).empty());
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_TRUE(has(notes[0], "repeat a seed")) << notes[0];
}

TEST(Seeds, ReportHasTheSeedNoiseSectionAndUsesItInTheVerdict) {
  Runs runs;
  const double full[] = {2.0, 2.1, 1.9}, diff[] = {0.01, 0.03, 0.02};
  for (int i = 0; i < 3; ++i) {
    runs.push_back(hand_run("full", 2, i + 1, full[i], 0.0));
    runs.push_back(hand_run("moba", 2, i + 1, full[i], diff[i]));
  }
  runs.push_back(hand_run("full", 3, 1, 1.8, 0.0));
  runs.push_back(hand_run("moba", 3, 1, 1.8, 0.01));
  StudyOptions o;
  o.bootstrap = 0;
  const Study s = run_study(runs, o);
  const std::string md = report_markdown(s, "runs", {});
  EXPECT_TRUE(has(md, "\n## Seed noise\n")) << md;
  // Per attention: the losses of seeds 1, 2, 3, mean 2, sd 0.1.
  EXPECT_TRUE(has(md, "| 2L x 2H x 16 (4.0K) | Full | 1, 2, 3 | 2.0000, 2.1000, 1.9000 | 2.0000 | "
                      "0.1000 |"))
      << md;
  // The differences, the t interval 0.02 +- 0.0248 and the lowest seed's exact bootstrap.
  EXPECT_TRUE(has(md, "| 2L x 2H x 16 (4.0K) | 1, 2, 3 | 0.0100, 0.0300, 0.0200 | 0.0200 | "
                      "[-0.0048, 0.0448] | 0.0100 [0.0100, 0.0100] (seed 1) | t over seeds "
                      "(wider) |"))
      << md;
  // The paired table has a row per seed; the one-seed size keeps its plain label.
  EXPECT_TRUE(has(md, "| 2L x 2H x 16 (4.0K), seed 3 | 4 | 0.0200 [0.0200, 0.0200]")) << md;
  EXPECT_TRUE(has(md, "| 3L x 3H x 24 (9.0K) | 4 | 0.0100 [0.0100, 0.0100]")) << md;
  // The verdict: the seeds' interval at L2 (it holds 0), the windows' at L3 (it excludes 0).
  EXPECT_TRUE(has(md, "the t interval over 3 seeds (wider than the window bootstrap) at 2L x 2H x "
                      "16 (4.0K); the window bootstrap over 4 windows at 3L x 3H x 24 (9.0K)"))
      << md;
  EXPECT_TRUE(has(md, "excludes equality at 0 sizes where MoBA is lower and 1 where it is higher"))
      << md;
  // Without seeds the section says there are none.
  Runs one = {hand_run("full", 2, 1, 2.0, 0.0), hand_run("moba", 2, 1, 2.0, 0.01)};
  const std::string md1 = report_markdown(run_study(one, o), "runs", {});
  EXPECT_TRUE(has(md1, "## Seed noise\n\nNo size has both attention types trained at two or more "
                       "seeds"))
      << md1;
}

// ---- Fits on the lowest seed ----------------------------------------------------------------

TEST(Seeds, FitRunsKeepTheLowestSeedOfEachReplicaSet) {
  Runs runs = {hand_run("full", 2, 7, 2.0, 0), hand_run("full", 2, 3, 2.0, 0),
                           hand_run("moba", 2, 5, 2.0, 0), hand_run("full", 3, 9, 2.0, 0),
                           hand_run("full", 2, -1, 2.0, 0), hand_run("moba", 2, 4, 2.0, 0)};
  runs.push_back(hand_run("full", 2, 1, 2.0, 0));
  runs.back().info.lr = 2e-3;  // another learning rate: not a replica of the others
  EXPECT_EQ(fit_runs(runs), (std::vector<bool>{false, true, false, true, true, true, true}));
  EXPECT_NE(replica_key(runs[0].info), replica_key(runs.back().info));
  EXPECT_EQ(replica_key(runs[0].info), replica_key(runs[1].info));
  EXPECT_NE(replica_key(runs[0].info), replica_key(runs[2].info));  // attention
}

// Two synthetic ladders as seeds 7 and 3 of the same runs, seed 7's 5% lower: the fits
// are exactly those of seed 3 alone (the lowest), not the lower envelope of both.
TEST(Seeds, FitsUseTheLowestSeedOnly) {
  TempDir tmp;
  SyntheticSpec spec;
  spec.seed = 11;
  write_synthetic_runs(tmp.path() / "a", spec);
  spec.seed = 12;
  write_synthetic_runs(tmp.path() / "b", spec);
  Runs low = read_runs(tmp.path() / "a"), high = read_runs(tmp.path() / "b");
  for (scaling::Run& r : low) r.info.seed = 3;
  for (scaling::Run& r : high) {
    r.info.seed = 7;
    r.info.name += "-s7";
    for (ValPoint& p : r.val) p.loss *= 0.95;
  }
  Runs both = high;  // the replicas first: the lowest seed wins, not the first
  both.insert(both.end(), low.begin(), low.end());
  StudyOptions o;
  o.bootstrap = 20;
  o.metrics = {Metric::lm()};
  const Study alone = run_study(low, o), s = run_study(both, o);
  ASSERT_EQ(s.runs.size(), 2 * alone.runs.size());
  ASSERT_EQ(s.in_fits.size(), s.runs.size());
  for (size_t i = 0; i < s.runs.size(); ++i) EXPECT_EQ(s.in_fits[i], s.runs[i].info.seed == 3);
  for (const std::string& a : {"full", "moba"})
    for (Compute c : {Compute::k6nd, Compute::kExec}) {
      const FitResult *f = s.find(Metric::lm(), a, c), *g = alone.find(Metric::lm(), a, c);
      ASSERT_TRUE(f && g && f->fit && g->fit);
      EXPECT_EQ(f->curves.size(), g->curves.size());
      EXPECT_DOUBLE_EQ(f->fit->law.A, g->fit->law.A) << a;
      EXPECT_DOUBLE_EQ(f->fit->law.alpha, g->fit->law.alpha) << a;
      ASSERT_TRUE(f->bootstrap && g->bootstrap);
      EXPECT_DOUBLE_EQ(f->bootstrap->alpha.lo, g->bootstrap->alpha.lo);
      for (const FrontierPoint& p : f->frontier)
        EXPECT_EQ(s.runs[static_cast<size_t>(p.run)].info.seed, 3);
    }
  bool noted = false;
  for (const std::string& n : s.notes)
    noted |= has(n, std::to_string(high.size()) + " seed replicas left out of the fits");
  EXPECT_TRUE(noted);
  const nlohmann::json j = to_json(s);
  EXPECT_EQ(j["runs"][0]["seed"], 7);
  EXPECT_EQ(j["runs"][0]["in_fits"], false);
}

// run.json's config.train.seed is read, and a bad one named.
TEST(Seeds, SeedIsReadFromRunJson) {
  TempDir tmp;
  RunInfo info;
  info.name = "r";
  info.attention = "full";
  info.status = "finished";
  info.lr = 1e-3;
  info.steps = 10;
  info.seed = 42;
  write_run_json(tmp.path() / "r", info);
  EXPECT_EQ(read_run(tmp.path() / "r").info.seed, 42);
  info.seed = -1;
  write_run_json(tmp.path() / "s", info);
  EXPECT_EQ(read_run(tmp.path() / "s").info.seed, -1);
  testing::write_file(tmp.path() / "t" / "run.json",
                      R"({"name": "t", "attention": "full", "status": "finished", "layers": 1,
                          "heads": 1, "width": 4, "seq_len": 8, "params_non_embedding": 10,
                          "tokens_planned": 10, "bytes_per_token": 1,
                          "config": {"train": {"seed": -3}}})");
  expect_error([&] { read_run(tmp.path() / "t"); }, "field 'train.seed' must be an integer >= 0");
}

}  // namespace
}  // namespace moba::scaling
