// moba plot RUNS_DIR --out DIR: the MoBA paper's two scaling figures (PNG and SVG).
#include <cstdio>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "scaling/plot.h"

namespace moba::cli {
namespace {

struct PlotOptions {
  std::string runs_dir, out_dir;
  std::vector<std::string> metrics = {"lm"};
  std::string compute = "both";
  bool irreducible = false;
  bool include_failed = false;
  int points_per_decade = 16;
  double png_scale = 2.0;
  std::string fit_from = "first-finish";
};

}  // namespace

void add_plot(CLI::App& app) {
  static PlotOptions o;
  CLI::App* cmd = app.add_subcommand(
      "plot", "Draw loss against PFLOP/s-days with the fitted projections (PNG and SVG)");
  cmd->add_option("runs_dir", o.runs_dir, "Folder of run folders (run.json + metrics.jsonl)")
      ->required();
  cmd->add_option("--out,-o", o.out_dir, "Folder for the figures")->required();
  cmd->add_option("--metric", o.metrics, "lm, trailing or bucket:I (repeatable)")
      ->capture_default_str();
  cmd->add_option("--compute", o.compute, kComputeHelp)
      ->capture_default_str();
  cmd->add_option("--png-scale", o.png_scale, "PNG pixels per point of the 900 x 600 canvas")
      ->capture_default_str();
  cmd->add_flag("--irreducible", o.irreducible, "Project L = E + A x C^-alpha");
  cmd->add_option("--grid", o.points_per_decade, "Frontier grid points per decade of compute")
      ->capture_default_str();
  cmd->add_option("--fit-from", o.fit_from,
                  "Envelope part fitted: first-finish (from the first finished run's compute) or all")
      ->capture_default_str();
  cmd->add_flag("--include-failed", o.include_failed, "Keep runs whose status is \"failed\"");
  cmd->callback([] {
    scaling::StudyOptions so;
    for (const std::string& m : o.metrics) so.metrics.push_back(scaling::Metric::parse(m));
    so.computes = parse_computes(o.compute);
    so.irreducible = o.irreducible;
    so.bootstrap = 0;  // the figures show the fits, not their intervals
    so.points_per_decade = o.points_per_decade;
    so.include_failed = o.include_failed;
    so.fit_from = scaling::parse_fit_from(o.fit_from);
    const scaling::Study s = scaling::run_study(scaling::read_runs(o.runs_dir), so);
    for (const std::string& n : s.notes) std::fprintf(stderr, "note: %s\n", n.c_str());
    for (const scaling::Metric& m : so.metrics)
      for (scaling::Compute c : so.computes)
        for (const auto& p : scaling::write_figures(s, m, c, o.out_dir, o.png_scale))
          std::printf("wrote %s\n", p.string().c_str());
  });
}

}  // namespace moba::cli
