// Figures and report: log ticks, figure contents, PNG/SVG files that are what they claim,
// a report that mentions every run.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "scaling/plot.h"
#include "scaling/plot_axes.h"
#include "scaling/report.h"
#include "scaling/runs.h"
#include "scaling/synthetic.h"
#include "scaling/temp_dir.h"

namespace moba::scaling {
namespace {

using testing::read_file;
using testing::TempDir;

const std::string kMinus = "\u2212";

TEST(Ticks, DecadesOnAWideAxis) {
  const auto ticks = log_ticks(2e-4, 3e-1);
  std::vector<std::string> labels;
  for (const Tick& t : ticks)
    if (t.major) labels.push_back(t.base + "^" + t.exponent);
  // 3.2 decades: decades only.
  EXPECT_EQ(labels, (std::vector<std::string>{"10^" + kMinus + "3", "10^" + kMinus + "2",
                                              "10^" + kMinus + "1"}));
  for (const Tick& t : ticks) {
    EXPECT_GE(t.value, 2e-4 * (1 - 1e-9));
    EXPECT_LE(t.value, 3e-1 * (1 + 1e-9));
  }
  EXPECT_EQ(ticks.size(), 8u + 9u + 9u + 3u);  // 2..9e-4, 1..9e-3, 1..9e-2, 1..3e-1
}

TEST(Ticks, TwoAndFiveLabelledOnAShortDecadeSpan) {
  std::vector<std::string> labels;
  for (const Tick& t : log_ticks(0.03, 2.0))
    if (t.major) labels.push_back(t.base + "^" + t.exponent);
  EXPECT_EQ(labels.front(), "5\u00d710^" + kMinus + "2");
  EXPECT_EQ(labels.back(), "2\u00d710^0");
}

TEST(Ticks, NiceStepsOnALossAxis) {
  std::vector<std::string> labels;
  for (const Tick& t : log_ticks(1.8, 3.5))
    if (t.major) labels.push_back(t.base);
  EXPECT_EQ(labels, (std::vector<std::string>{"2.00", "2.25", "2.50", "2.75", "3.00", "3.25", "3.50"}));
  labels.clear();
  for (const Tick& t : log_ticks(2.31, 2.62))
    if (t.major) labels.push_back(t.base);
  EXPECT_EQ(labels, (std::vector<std::string>{"2.35", "2.40", "2.45", "2.50", "2.55", "2.60"}));
  // A learning-rate axis of 0.67 decades: the linear steps crowd at the top, and the labels
  // too close to the one above them go (0.0035 beside 0.0040), from the top down.
  labels.clear();
  for (const Tick& t : log_ticks(0.00085, 0.0040))
    if (t.major) labels.push_back(t.base);
  EXPECT_EQ(labels, (std::vector<std::string>{"0.0010", "0.0015", "0.0020", "0.0025", "0.0030",
                                              "0.0040"}));
  EXPECT_TRUE(log_ticks(2, 1).empty());
  EXPECT_EQ(signed_number(-0.063, 3), kMinus + "0.063");
  EXPECT_EQ(signed_number(-0.0001, 3), "0.000");
  EXPECT_EQ(signed_number(2, 0), "2");
}

Study synthetic_study(const std::filesystem::path& dir, int bootstrap = 0) {
  SyntheticSpec spec;
  spec.running_runs = 1;
  write_synthetic_runs(dir, spec);
  StudyOptions o;
  o.bootstrap = bootstrap;
  return run_study(read_runs(dir), o);
}

TEST(Figure, ContentsOfBothFigures) {
  TempDir tmp;
  const Study s = synthetic_study(tmp.path() / "runs");
  const Figure f1 = make_figure(s, Metric::position_bucket(2), Compute::k6nd, false);
  EXPECT_NE(f1.title.find("LM loss 4K-6K"), std::string::npos);
  EXPECT_NE(f1.title.find("6ND"), std::string::npos);
  EXPECT_NE(f1.x_label.find("PFLOP/s-days"), std::string::npos);
  EXPECT_NE(f1.footnote.find("SYNTHETIC"), std::string::npos);
  int projections = 0, runs = 0;
  for (const Series& x : f1.series) {
    if (x.kind == Series::kProjection) {
      ++projections;
      EXPECT_NE(x.legend.find("projection"), std::string::npos);
      EXPECT_EQ(x.formula_exponent.rfind(kMinus, 0), 0u);
      for (double c : x.c) EXPECT_TRUE(c >= f1.x_lo * 0.999 && c <= f1.x_hi * 1.001);
    }
    runs += x.kind == Series::kRun;
  }
  EXPECT_EQ(projections, 2);
  EXPECT_EQ(runs, 0);
  EXPECT_LT(f1.y_lo, f1.y_hi);
  const Figure f2 = make_figure(s, Metric::lm(), Compute::kExec, true);
  EXPECT_NE(f2.title.find("executed FLOPs"), std::string::npos);
  runs = 0;
  for (const Series& x : f2.series) runs += x.kind == Series::kRun;
  EXPECT_EQ(runs, 10);
  // The projections come last: drawn over the runs.
  EXPECT_EQ(f2.series.back().kind, Series::kProjection);
}

TEST(Figure, FilesAreWrittenAndValid) {
  if (!plotting_available()) GTEST_SKIP() << "built without cairo";
  TempDir tmp;
  const Study s = synthetic_study(tmp.path() / "runs");
  const auto files = write_figures(s, Metric::lm(), Compute::k6nd, tmp.path() / "fig");
  ASSERT_EQ(files.size(), 4u);
  for (const auto& p : files) {
    ASSERT_TRUE(std::filesystem::exists(p)) << p;
    EXPECT_GT(std::filesystem::file_size(p), 10000u) << p;
    const std::string head = read_file(p).substr(0, 400);
    if (p.extension() == ".png") EXPECT_EQ(head.substr(0, 8), "\x89PNG\r\n\x1a\n") << p;
    else EXPECT_NE(head.find("<svg"), std::string::npos) << p;
  }
  EXPECT_EQ(files[0].filename(), "lm_6nd_frontier.png");
  EXPECT_EQ(files[3].filename(), "lm_6nd_runs.svg");
}

TEST(Report, MentionsEveryRunAndTheFits) {
  TempDir tmp;
  SyntheticSpec spec;
  spec.running_runs = 1;
  write_synthetic_runs(tmp.path() / "runs", spec);
  ReportOptions o;
  o.study.bootstrap = 50;
  const auto path = write_report(tmp.path() / "runs", tmp.path() / "out", o);
  const std::string md = read_file(path);
  for (const auto& r : read_runs(tmp.path() / "runs"))
    EXPECT_NE(md.find("| " + r.info.name + " |"), std::string::npos) << r.info.name;
  for (const char* needle :
       {"## Runs", "## Fits", "LM loss (MoBA) = ", "LM loss (Full) = ", "Trailing loss (MoBA) = ",
        "MoBA / full", "## Trailing loss", "**running**", "Synthetic runs", "bits/byte",
        "executed FLOPs"})
    EXPECT_NE(md.find(needle), std::string::npos) << needle;
  EXPECT_TRUE(std::filesystem::exists(tmp.path() / "out" / "fits.json"));
  if (plotting_available()) {
    EXPECT_NE(md.find("![LM loss, 6ND: frontier and fitted projections](figures/lm_6nd_frontier.png)"),
              std::string::npos);
    EXPECT_NE(md.find("figures/bucket2_6nd_runs.png"), std::string::npos);
    EXPECT_TRUE(std::filesystem::exists(tmp.path() / "out" / "figures" / "lm_exec_runs.svg"));
  }
}

// The sentence under the projected trailing-loss ratios: a crossing inside the range is
// named (with its compute), else whether the gap narrows or widens and who is lower.
TEST(Report, RatioTrendNamesACrossingOrTheGapsDirection) {
  const PowerLaw full{2.0, 0.10};
  // MoBA = 2.2 C^-0.08: MoBA / full = 1.1 C^0.02, 1 at C = 1.1^-50 = 8.52e-3.
  const PowerLaw moba{2.2, 0.08};
  const std::string cross = ratio_trend(full, moba, 1e-6, 1.0);
  EXPECT_NE(cross.find("from 0.8344 to 1.1000: the fits cross at C = 0.00852 PFLOP/s-days, MoBA lower below it and "
                       "higher above it."),
            std::string::npos)
      << cross;
  // Crossing the other way round: 0.9 C^-0.02, 1 at C = 0.9^50.
  const std::string back = ratio_trend(full, PowerLaw{1.8, 0.12}, 1e-6, 1.0);
  EXPECT_NE(back.find("MoBA higher below it and lower above it."), std::string::npos) << back;
  // No crossing in [1e-6, 1e-3]: MoBA lower throughout, the gap to 1 narrowing...
  const std::string narrows = ratio_trend(full, moba, 1e-6, 1e-3);
  EXPECT_NE(narrows.find("the gap narrows with compute, MoBA lower throughout."), std::string::npos)
      << narrows;
  // ...and past the crossing, MoBA higher and the gap widening.
  const std::string widens = ratio_trend(full, moba, 1e-1, 1.0);
  EXPECT_NE(widens.find("the gap widens with compute, MoBA higher throughout."), std::string::npos)
      << widens;
  EXPECT_EQ(widens.find("cross"), std::string::npos) << widens;
}

// The laws' sentence: which side of 0 the exponents' difference lies, whether the loss ratio's
// interval includes 1.
TEST(Report, LawSentenceSaysWhatTheIntervalsExclude) {
  FitComparison c;
  c.alpha_diff = -0.008;
  c.alpha_diff_ci = {-0.012, -0.0004};
  c.c_star = 9.17e-4;
  c.loss_ratio = 1.0089;
  c.loss_ratio_ci = {0.9944, 1.0218};
  c.replicas = 1000;
  EXPECT_EQ(law_sentence(c),
            "LM loss against compute (6ND): MoBA's exponent minus full attention's is -0.008 "
            "[-0.012, -0.000]: MoBA's loss falls more slowly with compute (the interval excludes "
            "0, by less than 0.0005). At the largest compute of the runs (C* = 0.000917 PFLOP/s-days) MoBA's loss is "
            "1.0089 [0.9944, 1.0218] of full's (the interval includes 1; 1000 bootstrap "
            "replicas over the runs).");
  c.alpha_diff_ci = {-0.02, 0.002};
  c.loss_ratio_ci = {1.002, 1.02};
  const std::string s = law_sentence(c);
  EXPECT_NE(s.find("the two exponents do not differ beyond their interval"), std::string::npos) << s;
  EXPECT_NE(s.find("of full's (higher;"), std::string::npos) << s;
  c.alpha_diff = 0.01;
  c.alpha_diff_ci = {0.001, 0.02};
  EXPECT_NE(law_sentence(c).find("falls faster with compute (the interval excludes 0)."),
            std::string::npos)
      << law_sentence(c);
}

// Losses in nats per token and bits per byte: the run table's LM and trailing losses, the
// per-size LM losses, and the fits' conversion, from run.json's bytes_per_token (2 here,
// as a BPE tokenizer would have; 1 for byte-level tokens).
TEST(Report, BitsPerByteFromBytesPerToken) {
  TempDir tmp;
  SyntheticSpec spec;
  write_synthetic_runs(tmp.path() / "runs", spec);
  for (const auto& r : read_runs(tmp.path() / "runs")) {
    const auto path = r.dir / "run.json";
    nlohmann::json j = nlohmann::json::parse(read_file(path));
    j["bytes_per_token"] = 2.0;
    std::ofstream(path) << j.dump(2) << "\n";
  }
  ReportOptions o;
  o.study.bootstrap = 0;
  const std::string md = read_file(write_report(tmp.path() / "runs", tmp.path() / "out", o));
  auto fmt = [](double x) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3f", x);
    return std::string(buf);
  };
  const double k = 2.0 * std::log(2.0);
  const auto runs = read_runs(tmp.path() / "runs");
  ASSERT_FALSE(runs.empty());
  for (const auto& r : runs) {
    ASSERT_EQ(r.info.bytes_per_token, 2.0);
    const ValPoint* v = r.last_val();
    ASSERT_NE(v, nullptr);
    const size_t at = md.find("| " + r.info.name + " |");
    ASSERT_NE(at, std::string::npos) << r.info.name;
    const std::string row = md.substr(at, md.find('\n', at) - at);
    EXPECT_NE(row.find("| " + fmt(v->loss) + " | " + fmt(v->loss / k) + " | "), std::string::npos)
        << row;
    EXPECT_NE(row.find("| " + fmt(v->trailing_loss) + " | " + fmt(v->trailing_loss / k) + " |"),
              std::string::npos)
        << row;
  }
  EXPECT_NE(md.find("trailing loss (bits/byte)"), std::string::npos);
  EXPECT_NE(md.find("LM bits/byte full / MoBA"), std::string::npos);
  EXPECT_NE(md.find("In bits per byte (2.000 bytes per token): divide A by ln 2 x "
                    "bytes_per_token = 1.3863; alpha is unchanged."),
            std::string::npos);
  const auto pairs = pair_by_size(runs);
  ASSERT_FALSE(pairs.empty());
  const SizePair& p = pairs.front();
  EXPECT_NE(md.find(fmt(p.full_point->loss / k) + " / " + fmt(p.moba_point->loss / k)),
            std::string::npos);
}

TEST(Report, PairsRunsBySizeAtEqualTokens) {
  TempDir tmp;
  SyntheticSpec spec;
  spec.running_runs = 1;  // the largest MoBA run stopped at two thirds
  write_synthetic_runs(tmp.path(), spec);
  const auto runs = read_runs(tmp.path());
  const auto pairs = pair_by_size(runs);
  ASSERT_EQ(pairs.size(), 5u);
  for (const SizePair& p : pairs) {
    EXPECT_EQ(p.full->info.params_non_embedding, p.moba->info.params_non_embedding);
    EXPECT_TRUE(p.same_tokens);
    EXPECT_EQ(p.full_point->tokens, p.moba_point->tokens);
  }
  // The running pair is compared where both have points, not at the full run's end.
  EXPECT_LT(pairs.back().full_point->tokens, pairs.back().full->info.tokens_planned * 0.9);
}

// Issue 15, finding 11: run names are text from run folders; in the report's tables they
// are escaped, so '|' cannot cut a row and HTML is shown, not rendered.
TEST(Report, RunNamesAreEscapedInTables) {
  TempDir tmp;
  SyntheticSpec spec;
  write_synthetic_runs(tmp.path() / "runs", spec);
  const auto runs = read_runs(tmp.path() / "runs");
  ASSERT_FALSE(runs.empty());
  const auto path = runs.front().dir / "run.json";
  nlohmann::json j = nlohmann::json::parse(read_file(path));
  j["name"] = "<img src=x onerror=alert(1)>|evil";
  std::ofstream(path) << j.dump(2) << "\n";
  ReportOptions o;
  o.study.bootstrap = 0;
  const std::string md = read_file(write_report(tmp.path() / "runs", tmp.path() / "out", o));
  EXPECT_EQ(md.find("<img"), std::string::npos);
  EXPECT_NE(md.find("| &lt;img src=x onerror=alert(1)&gt;\\|evil |"), std::string::npos);
}

}  // namespace
}  // namespace moba::scaling
