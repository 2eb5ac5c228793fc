// moba plot RUNS_DIR --out DIR: the MoBA paper's two scaling figures (PNG and SVG).
#include <cstdio>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/scaling_options.h"
#include "scaling/plot.h"

namespace moba::cli {
namespace {

struct PlotOptions {
  StudyCliOptions study = [] {
    StudyCliOptions s;
    s.metrics = {"lm"};  // the paper's figures
    return s;
  }();
  std::string out_dir;
  double png_scale = 2.0;
};

}  // namespace

void add_plot(CLI::App& app) {
  static PlotOptions o;
  CLI::App* cmd = add_scaling_command(
      app, "plot",
      "Draw loss against PFLOP/s-days with the fitted projections (PNG and SVG)", o.study);
  cmd->add_option("--out,-o", o.out_dir, "Folder for the figures")->required();
  cmd->add_option("--metric", o.study.metrics, "lm, trailing or bucket:I (repeatable)")
      ->capture_default_str();
  add_compute(cmd, o.study);
  cmd->add_option("--png-scale", o.png_scale, "PNG pixels per point of the 900 x 600 canvas")
      ->capture_default_str();
  add_fit_options(cmd, o.study, "Project L = E + A x C^-alpha", /*with_bootstrap=*/false);
  cmd->callback([] {
    scaling::StudyOptions so = study_options(o.study);
    so.bootstrap = 0;  // the figures show the fits, not their intervals
    const scaling::Study s = scaling::run_study(scaling::read_runs(o.study.runs_dir), so);
    for (const std::string& n : s.notes) std::fprintf(stderr, "note: %s\n", n.c_str());
    for (const scaling::Metric& m : so.metrics)
      for (scaling::Compute c : so.computes)
        for (const auto& p : scaling::write_figures(s, m, c, o.out_dir, o.png_scale))
          std::printf("wrote %s\n", p.string().c_str());
  });
}

}  // namespace moba::cli
