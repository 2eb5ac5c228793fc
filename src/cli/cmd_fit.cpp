// moba fit RUNS_DIR [-o fits.json]: the compute-optimal frontier of each attention type and its
// power-law fit with bootstrap intervals, for every metric and both compute conventions.
#include <cstdio>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/json_file.h"
#include "cli/scaling_options.h"
#include "scaling/study.h"

namespace moba::cli {
namespace {

struct FitOptions {
  StudyCliOptions study;
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

void add_fit(CLI::App& app) {
  static FitOptions o;
  CLI::App* cmd = add_scaling_command(
      app, "fit",
      "Fit L = A x C^-alpha to each attention type's compute-optimal frontier", o.study);
  cmd->add_option("--metric", o.study.metrics,
                  "lm, trailing or bucket:I (repeatable; default: all)");
  add_compute(cmd, o.study);
  add_fit_options(cmd, o.study, "Fit L = E + A x C^-alpha (Levenberg-Marquardt)",
                  /*with_bootstrap=*/true);
  // Listed last: the JSON is an extra, the table on stdout is fit's output.
  add_out(cmd, {o.json_path, "Also write everything (frontiers included) as JSON to this file",
                /*required=*/false});
  add_old_spelling(cmd, "--json", o.json_path, "--out");
  cmd->callback([] {
    const scaling::Study s =
        scaling::run_study(scaling::read_runs(o.study.runs_dir), study_options(o.study));
    print_study(s, o.study.runs_dir);
    if (!o.json_path.empty()) write_json_file(o.json_path, scaling::to_json(s));
  });
}

}  // namespace moba::cli
