// Paired statistics of MoBA against full attention: exact on a constant shift, an
// interval holding zero on pure noise, refusals when the windows differ, the verdict's
// wording, and the window fields' round trip through metrics.jsonl.
#include "scaling/paired.h"

#include <gtest/gtest.h>

#include <random>

#include "scaling/report.h"
#include "scaling/runs.h"
#include "scaling/temp_dir.h"

namespace moba::scaling {
namespace {

ValPoint point(const std::vector<double>& windows, const std::string& hash) {
  ValPoint p;
  p.step = 10;
  p.tokens = 1000;
  p.windows = static_cast<int64_t>(windows.size());
  p.window_losses = windows;
  p.bucket_size = 4;
  for (double w : windows) p.window_bucket_losses.push_back({w + 0.1, w - 0.1});
  double s = 0;
  for (double w : windows) s += w;
  p.loss = s / static_cast<double>(windows.size());
  p.windows_hash = hash;
  return p;
}

TEST(Paired, AConstantShiftIsExactAndDecided) {
  std::mt19937_64 g(7);
  std::normal_distribution<double> n(2.0, 0.3);
  std::vector<double> full, moba;
  for (int i = 0; i < 16; ++i) full.push_back(n(g)), moba.push_back(full.back() + 0.02);
  const ValPoint f = point(full, "h"), m = point(moba, "h");
  const SizePair pair{nullptr, nullptr, &f, &m, true};
  std::string why;
  const auto st = paired_stats(pair, 500, 1, &why);
  ASSERT_TRUE(st) << why;
  EXPECT_EQ(st->windows, 16);
  EXPECT_NEAR(st->diff.value, 0.02, 1e-12);
  EXPECT_NEAR(st->diff.lo, 0.02, 1e-12);  // every window moves alike: no spread
  EXPECT_NEAR(st->diff.hi, 0.02, 1e-12);
  EXPECT_GT(st->ratio.lo, 1.0);
  ASSERT_EQ(st->bucket_diff.size(), 2u);
  EXPECT_NEAR(st->bucket_diff[1].value, 0.02, 1e-12);
  const std::string v = paired_verdict({*st});
  EXPECT_NE(v.find("at 0 sizes where MoBA is lower and 1 where it is higher"), std::string::npos) << v;
  // Every interval on one side: said first, with the point estimates' range.
  char lead[128];
  std::snprintf(lead, sizeof lead, "MoBA's LM loss is higher than full attention's by %.1f%% to %.1f%%",
                100 * (st->ratio.value - 1), 100 * (st->ratio.value - 1));
  EXPECT_EQ(v.rfind(lead, 0), 0u) << v << "\n" << lead;
}

TEST(Paired, NoiseGivesAnIntervalAroundZero) {
  std::mt19937_64 g(11);
  std::normal_distribution<double> base(2.0, 0.3), noise(0.0, 0.05);
  std::vector<double> full, moba;
  for (int i = 0; i < 64; ++i) full.push_back(base(g)), moba.push_back(full.back() + noise(g));
  const ValPoint f = point(full, "h"), m = point(moba, "h");
  const auto st = paired_stats({nullptr, nullptr, &f, &m, true}, 2000, 3, nullptr);
  ASSERT_TRUE(st);
  EXPECT_LT(st->diff.lo, st->diff.value);
  EXPECT_GT(st->diff.hi, st->diff.value);
  // The mean of 64 N(0, 0.05) draws: an interval of about +-0.012 around it.
  EXPECT_NEAR(st->diff.hi - st->diff.lo, 2 * 1.96 * 0.05 / 8, 0.008);
  EXPECT_LT(st->diff.lo, 0.0);
  EXPECT_GT(st->diff.hi, 0.0);
  EXPECT_NE(paired_verdict({*st}).find("cannot tell the two apart"), std::string::npos);
}

TEST(Paired, RefusesWhatCannotBePaired) {
  const ValPoint f = point({1, 2, 3}, "a"), other = point({1, 2, 3}, "b"), shorter = point({1, 2}, "a");
  ValPoint old = f;
  old.window_losses.clear();
  std::string why;
  EXPECT_FALSE(paired_stats({nullptr, nullptr, &f, &other, true}, 10, 1, &why));
  EXPECT_NE(why.find("not the same validation windows"), std::string::npos);
  EXPECT_FALSE(paired_stats({nullptr, nullptr, &f, &shorter, true}, 10, 1, &why));
  EXPECT_NE(why.find("different numbers"), std::string::npos);
  EXPECT_FALSE(paired_stats({nullptr, nullptr, &f, &old, true}, 10, 1, &why));
  EXPECT_NE(why.find("without window_losses"), std::string::npos);
  EXPECT_FALSE(paired_stats({nullptr, nullptr, &f, &f, false}, 10, 1, &why));
  EXPECT_NE(why.find("common token count"), std::string::npos);
}

TEST(Paired, WindowFieldsRoundTripThroughMetrics) {
  testing::TempDir tmp;
  const ValPoint p = point({1.5, 2.5, 3.25}, "00ff");
  RunInfo info;
  info.name = "r";
  info.attention = "moba";
  info.status = "finished";
  write_run_json(tmp.path() / "r", info);
  testing::write_file(tmp.path() / "r" / "metrics.jsonl", val_line(p) + "\n");
  const scaling::Run r = read_run(tmp.path() / "r");
  ASSERT_EQ(r.val.size(), 1u);
  EXPECT_EQ(r.val[0].window_losses, p.window_losses);
  EXPECT_EQ(r.val[0].window_bucket_losses, p.window_bucket_losses);
  EXPECT_EQ(r.val[0].windows_hash, "00ff");
  // A count that disagrees with `windows` names the problem.
  ValPoint bad = p;
  bad.windows = 5;
  testing::write_file(tmp.path() / "r" / "metrics.jsonl", val_line(bad) + "\n");
  testing::expect_error([&] { read_run(tmp.path() / "r"); }, "'window_losses' holds 3 values for 5 windows");
}

}  // namespace
}  // namespace moba::scaling
