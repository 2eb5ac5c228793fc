// moba fit RUNS_DIR [-o fits.json]: the compute-optimal frontier of each attention type and its
// power-law fit with bootstrap intervals, for every metric and both compute conventions.
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "scaling/study.h"

namespace moba::cli {
namespace {

struct FitOptions {
  std::string runs_dir;
  std::vector<std::string> metrics;        // empty: all
  std::string compute = "both";            // 6nd, exec or both
  bool irreducible = false;
  bool include_failed = false;
  int bootstrap = 1000;
  uint64_t seed = 1;
  int points_per_decade = 16;
  std::string fit_from = "first-finish";
  std::string json_path;
};

void print_study(const scaling::Study& s, const std::string& runs_dir) {
  using namespace moba::scaling;
  const StudyOptions& o = s.options;
  std::printf("moba fit %s: L = %sA x C^-alpha, bootstrap %d (seed %llu), grid %d/decade, "
              "fit from %s%s\n",
              runs_dir.c_str(), o.irreducible ? "E + " : "", o.bootstrap,
              static_cast<unsigned long long>(o.seed), o.points_per_decade,
              fit_from_id(o.fit_from).c_str(), o.include_failed ? ", failed runs kept" : "");
  int flagged = 0;
  for (const Run& r : s.runs) flagged += !run_flag(r).empty();
  std::printf("%zu runs (%d flagged)", s.runs.size(), flagged);
  for (const std::string& a : s.attentions) {
    int n = 0;
    for (const Run& r : s.runs) n += r.info.attention == a;
    std::printf(", %d %s", n, attention_label(a).c_str());
  }
  std::printf("\n");
  for (const std::string& n : s.notes) std::fprintf(stderr, "note: %s\n", n.c_str());
  for (Compute c : s.options.computes) {
    std::printf("\nC in PFLOP/s-days, compute = %s%s\n", compute_label(c).c_str(),
                c == Compute::k6nd ? " (the paper's)" : "");
    for (const FitResult& f : s.fits) {
      if (f.compute != c) continue;
      std::printf("  %-46s", formula(s, f).c_str());
      if (f.fit && f.bootstrap && f.bootstrap->replicas_ok > 0) {
        std::printf("  A 95%% [%.3f, %.3f]  alpha 95%% [%.3f, %.3f]", f.bootstrap->A.lo,
                    f.bootstrap->A.hi, f.bootstrap->alpha.lo, f.bootstrap->alpha.hi);
        if (f.fit->irreducible)
          std::printf("  E 95%% [%.3f, %.3f]", f.bootstrap->E.lo, f.bootstrap->E.hi);
      }
      if (f.fit)
        std::printf("  (%zu runs, %d points, rms log residual %.4f%s)", f.curves.size(),
                    f.fit->points, f.fit->rms_log_residual, f.fit->converged ? "" : ", NOT CONVERGED");
      std::printf("\n");
    }
  }
}

}  // namespace

std::vector<scaling::Compute> parse_computes(const std::string& s) {
  if (s == "both") return {scaling::Compute::k6nd, scaling::Compute::kExec};
  MOBA_CHECK(s == "6nd" || s == "exec", "--compute must be 6nd, exec or both, got '", s, "'");
  return {scaling::parse_compute(s)};
}

void add_fit(CLI::App& app) {
  static FitOptions o;
  CLI::App* cmd = app.add_subcommand(
      "fit", "Fit L = A x C^-alpha to each attention type's compute-optimal frontier");
  cmd->add_option("runs_dir", o.runs_dir, "Folder of run folders (run.json + metrics.jsonl)")
      ->required();
  cmd->add_option("--metric", o.metrics, "lm, trailing or bucket:I (repeatable; default: all)");
  cmd->add_option("--compute", o.compute, kComputeHelp)
      ->capture_default_str();
  cmd->add_flag("--irreducible", o.irreducible, "Fit L = E + A x C^-alpha (Levenberg-Marquardt)");
  cmd->add_option("--bootstrap", o.bootstrap, "Bootstrap replicas over runs (0: no intervals)")
      ->capture_default_str();
  cmd->add_option("--seed", o.seed, "Seed of the bootstrap draws")->capture_default_str();
  cmd->add_option("--grid", o.points_per_decade, "Frontier grid points per decade of compute")
      ->capture_default_str();
  cmd->add_option("--fit-from", o.fit_from,
                  "Envelope part fitted: first-finish (from the first finished run's compute) or all")
      ->capture_default_str();
  cmd->add_flag("--include-failed", o.include_failed, "Keep runs whose status is \"failed\"");
  cmd->add_option("--out,-o", o.json_path,
                  "Also write everything (frontiers included) as JSON to this file");
  add_old_spelling(cmd, "--json", o.json_path, "--out");
  cmd->callback([] {
    scaling::StudyOptions so;
    for (const std::string& m : o.metrics) so.metrics.push_back(scaling::Metric::parse(m));
    so.computes = parse_computes(o.compute);
    so.irreducible = o.irreducible;
    so.bootstrap = o.bootstrap;
    so.seed = o.seed;
    so.points_per_decade = o.points_per_decade;
    so.include_failed = o.include_failed;
    so.fit_from = scaling::parse_fit_from(o.fit_from);
    const scaling::Study s = scaling::run_study(scaling::read_runs(o.runs_dir), so);
    print_study(s, o.runs_dir);
    if (!o.json_path.empty()) {
      std::ofstream f(o.json_path);
      MOBA_CHECK(f.good(), "cannot write JSON to '", o.json_path, "'");
      f << scaling::to_json(s).dump(2) << "\n";
    }
  });
}

}  // namespace moba::cli
