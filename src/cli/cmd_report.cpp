// moba report RUNS_DIR --out DIR: Markdown report (runs, fits with intervals, MoBA/full
// ratio per size, trailing loss, figures) plus fits.json.
#include <cstdio>
#include <string>

#include "cli/commands.h"
#include "cli/scaling_options.h"
#include "scaling/report.h"

namespace moba::cli {
namespace {

struct ReportCliOptions {
  StudyCliOptions study;
  std::string out_dir;
  int bucket = -1;
};

}  // namespace

void add_report(CLI::App& app) {
  static ReportCliOptions o;
  CLI::App* cmd = add_scaling_command(
      app, "report", "Write a Markdown report of a scaling study: runs, fits, ratios, figures",
      o.study, {o.out_dir, "Folder for report.md, fits.json and figures/"});
  add_compute(cmd, o.study);
  cmd->add_option("--bucket", o.bucket,
                  "Position bucket to draw (-1: bucket 2, the paper's 4K-6K, when present)")
      ->capture_default_str();
  add_fit_options(cmd, o.study, "Fit L = E + A x C^-alpha", /*with_bootstrap=*/true);
  cmd->callback([] {
    scaling::ReportOptions ro;
    ro.bucket = o.bucket;
    ro.study = study_options(o.study);
    const auto path = scaling::write_report(o.study.runs_dir, o.out_dir, ro);
    std::printf("wrote %s\n", path.string().c_str());
  });
}

}  // namespace moba::cli
