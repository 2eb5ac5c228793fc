// `moba report`: the Markdown report of a scaling study, with its figures and fits.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "scaling/plan_times.h"
#include "scaling/study.h"

namespace moba::scaling {

struct ReportOptions {
  int bucket = -1;  // position bucket drawn besides LM and trailing loss; -1: bucket 2
                    // (the paper's 4K-6K with 2K buckets) if present, else the last one
  StudyOptions study;
};

// Pairs of runs of one size (same layers, heads, width, non-embedding parameters and
// sequence length), full against MoBA, compared at the largest token count both have
// evaluated.
struct SizePair {
  const Run* full = nullptr;
  const Run* moba = nullptr;
  const ValPoint* full_point = nullptr;  // the compared validation points
  const ValPoint* moba_point = nullptr;
  bool same_tokens = true;  // false: no common token count, the last points are compared
};
std::vector<SizePair> pair_by_size(const std::vector<Run>& runs);

// A figure of the report: its caption and its path relative to the report's folder.
struct ReportFigure {
  std::string caption, path;
};

// The Markdown text; with plan_times (a plan.json was found), its section "Planned against
// measured time".
std::string report_markdown(const Study& s, const std::string& runs_dir,
                            const std::vector<ReportFigure>& figures,
                            const std::optional<PlanTimes>& plan_times = std::nullopt);

// The sentence after the report's projected trailing-loss ratios: how MoBA / full moves over
// the fitted range of compute [c_lo, c_hi], from the two laws. Where the ratio crosses 1 in
// the range it names the crossing compute (bisection in log C) and which side is lower;
// else whether the gap to 1 narrows or widens and which type is lower throughout.
std::string ratio_trend(const PowerLaw& full, const PowerLaw& moba, double c_lo, double c_hi);

// The sentence after the verdict: the LM-loss laws compared (6ND), the exponents' difference
// and the loss ratio at the largest compute, each with its interval and what it excludes.
std::string law_sentence(const FitComparison& c);

// Text from run folders (names, statuses) as table cell text: a name holding '|' would cut
// the table, one holding HTML would render as HTML. Markdown specials are escaped with a
// backslash, HTML's with entities, line ends become spaces.
std::string md_cell(const std::string& s);

// Reads the runs, fits, draws the figures (when cairo is built in) and writes
// out_dir/report.md, out_dir/fits.json and out_dir/figures/; the report compares the plan's
// times with the runs' when RUNS_DIR or its parent holds a plan.json (plan_times.h), and
// then writes that comparison to out_dir/plan_times.json too. Returns report.md's path.
std::filesystem::path write_report(const std::filesystem::path& runs_dir,
                                   const std::filesystem::path& out_dir,
                                   const ReportOptions& options);

}  // namespace moba::scaling
