// moba report RUNS_DIR --out DIR: Markdown report (runs, fits with intervals, MoBA/full
// ratio per size, trailing loss, figures) plus fits.json.
#include <cstdio>
#include <string>

#include "cli/commands.h"
#include "scaling/report.h"

namespace moba::cli {
namespace {

struct ReportCliOptions {
  std::string runs_dir, out_dir;
  std::string compute = "both";
  int bucket = -1;
  bool irreducible = false;
  bool include_failed = false;
  int bootstrap = 1000;
  uint64_t seed = 1;
  int points_per_decade = 16;
  std::string fit_from = "first-finish";
};

}  // namespace

void add_report(CLI::App& app) {
  static ReportCliOptions o;
  CLI::App* cmd = app.add_subcommand(
      "report", "Write a Markdown report of a scaling study: runs, fits, ratios, figures");
  cmd->add_option("runs_dir", o.runs_dir, "Folder of run folders (run.json + metrics.jsonl)")
      ->required();
  cmd->add_option("--out,-o", o.out_dir, "Folder for report.md, fits.json and figures/")->required();
  cmd->add_option("--compute", o.compute, kComputeHelp)
      ->capture_default_str();
  cmd->add_option("--bucket", o.bucket,
                  "Position bucket to draw (-1: bucket 2, the paper's 4K-6K, when present)")
      ->capture_default_str();
  cmd->add_flag("--irreducible", o.irreducible, "Fit L = E + A x C^-alpha");
  cmd->add_option("--bootstrap", o.bootstrap, "Bootstrap replicas over runs (0: no intervals)")
      ->capture_default_str();
  cmd->add_option("--seed", o.seed, "Seed of the bootstrap draws")->capture_default_str();
  cmd->add_option("--grid", o.points_per_decade, "Frontier grid points per decade of compute")
      ->capture_default_str();
  cmd->add_option("--fit-from", o.fit_from,
                  "Envelope part fitted: first-finish (from the first finished run's compute) or all")
      ->capture_default_str();
  cmd->add_flag("--include-failed", o.include_failed, "Keep runs whose status is \"failed\"");
  cmd->callback([] {
    scaling::ReportOptions ro;
    ro.bucket = o.bucket;
    ro.study.computes = parse_computes(o.compute);
    ro.study.irreducible = o.irreducible;
    ro.study.bootstrap = o.bootstrap;
    ro.study.seed = o.seed;
    ro.study.points_per_decade = o.points_per_decade;
    ro.study.include_failed = o.include_failed;
    ro.study.fit_from = scaling::parse_fit_from(o.fit_from);
    const auto path = scaling::write_report(o.runs_dir, o.out_dir, ro);
    std::printf("wrote %s\n", path.string().c_str());
  });
}

}  // namespace moba::cli
