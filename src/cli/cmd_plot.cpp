// moba plot RUNS_DIR --out DIR: the MoBA paper's two scaling figures (PNG and SVG).
// moba plot lr RUNS_DIR --out DIR: a learning-rate search's figure, table and JSON
// (scaling/lr_search.h, docs/sweep.md "Learning-rate search").
#include <cstdio>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/scaling_options.h"
#include "scaling/lr_search.h"
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

struct PlotLrOptions {
  std::string runs_dir, out_dir;
  double tolerance = 0.01;
  double png_scale = 2.0;
};

void add_plot_lr(CLI::App* plot) {
  static PlotLrOptions o;
  CLI::App* cmd = plot->add_subcommand(
      "lr",
      "A learning-rate search ([search] in the sweep's preset): final loss against lr per "
      "size, the best and fitted optima, flat ranges and the rule across sizes");
  cmd->add_option("runs_dir", o.runs_dir, "Folder of run folders (run.json + metrics.jsonl)")
      ->required();
  cmd->add_option("--out,-o", o.out_dir,
                  "Folder for lr_search.png, lr_search.svg, lr_search.md and lr_search.json")
      ->required();
  cmd->add_option("--flat", o.tolerance,
                  "The flat range: learning rates whose final loss is within this fraction of "
                  "the best")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  cmd->add_option("--png-scale", o.png_scale, "PNG pixels per point of the canvas")
      ->capture_default_str();
  cmd->callback([] {
    for (const auto& p : scaling::write_lr_search(o.runs_dir, o.out_dir, o.tolerance, o.png_scale))
      std::printf("wrote %s\n", p.string().c_str());
  });
}

}  // namespace

void add_plot(CLI::App& app) {
  static PlotOptions o;
  // Neither RUNS_DIR nor --out is required of `moba plot lr ...`, which has its own.
  CLI::App* cmd = add_scaling_command(
      app, "plot", "Draw loss against PFLOP/s-days with the fitted projections (PNG and SVG)",
      o.study, {o.out_dir, "Folder for the figures (required)", /*required=*/false});
  cmd->add_option("--metric", o.study.metrics, "lm, trailing or bucket:I (repeatable)")
      ->capture_default_str();
  add_compute(cmd, o.study);
  cmd->add_option("--png-scale", o.png_scale, "PNG pixels per point of the 900 x 600 canvas")
      ->capture_default_str();
  add_fit_options(cmd, o.study, "Project L = E + A x C^-alpha", /*with_bootstrap=*/false);
  add_plot_lr(cmd);
  cmd->callback([cmd] {
    if (!cmd->get_subcommands().empty()) return;  // `moba plot lr` ran
    if (o.study.runs_dir.empty()) throw CLI::RequiredError("runs_dir");
    if (o.out_dir.empty()) throw CLI::RequiredError("--out");
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
