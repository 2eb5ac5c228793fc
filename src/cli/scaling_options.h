// The options that the scaling commands (fit, plot, report) share: the runs folder, the
// compute conventions and how each frontier is fitted. Each command declares the ones it takes
// with the add_* helpers below, in the order its --help lists them, and turns them into
// scaling::StudyOptions with study_options(), so that one flag means the same in all three.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "scaling/curves.h"
#include "scaling/study.h"

namespace moba::cli {

struct StudyCliOptions {
  std::string runs_dir;
  std::vector<std::string> metrics;  // --metric; empty: all
  std::string compute = "both";      // 6nd, exec or both
  bool irreducible = false;
  bool include_failed = false;
  int bootstrap = 1000;
  uint64_t seed = 1;
  int points_per_decade = 16;
  std::string fit_from = "first-finish";
};

// --compute: "6nd", "exec" or "both" (default "both" in each command).
inline constexpr const char* kComputeHelp =
    "Compute convention(s): 6nd (the paper's), exec (FLOPs executed) or both";

inline std::vector<scaling::Compute> parse_computes(const std::string& s) {
  if (s == "both") return {scaling::Compute::k6nd, scaling::Compute::kExec};
  MOBA_CHECK(s == "6nd" || s == "exec", "--compute must be 6nd, exec or both, got '", s, "'");
  return {scaling::parse_compute(s)};
}

// What a scaling command writes: -o/--out into `path` (a file or a folder; `help` says which).
struct OutOption {
  std::string& path;
  std::string help;
  bool required = true;
};

inline void add_out(CLI::App* cmd, const OutOption& out) {
  cmd->add_option("--out,-o", out.path, out.help)->required(out.required);
}

// The subcommand `name` of app, with its required positional RUNS_DIR.
inline CLI::App* add_scaling_command(CLI::App& app, const std::string& name,
                                     const std::string& description, StudyCliOptions& o) {
  CLI::App* cmd = app.add_subcommand(name, description);
  cmd->add_option("runs_dir", o.runs_dir, "Folder of run folders (run.json + metrics.jsonl)")
      ->required();
  return cmd;
}

// The same with -o/--out listed right after RUNS_DIR. out.required holds for RUNS_DIR too:
// only a command with a subcommand of its own that takes neither (`moba plot lr`) leaves
// them optional, and checks them itself when it runs.
inline CLI::App* add_scaling_command(CLI::App& app, const std::string& name,
                                     const std::string& description, StudyCliOptions& o,
                                     const OutOption& out) {
  CLI::App* cmd = add_scaling_command(app, name, description, o);
  cmd->get_option("runs_dir")->required(out.required);
  add_out(cmd, out);
  return cmd;
}

inline void add_compute(CLI::App* cmd, StudyCliOptions& o) {
  cmd->add_option("--compute", o.compute, kComputeHelp)->capture_default_str();
}

// --irreducible (its help says what the command does with it), --bootstrap and --seed when
// the command draws intervals, then --grid, --fit-from and --include-failed.
inline void add_fit_options(CLI::App* cmd, StudyCliOptions& o, const std::string& irreducible_help,
                            bool with_bootstrap) {
  cmd->add_flag("--irreducible", o.irreducible, irreducible_help);
  if (with_bootstrap) {
    cmd->add_option("--bootstrap", o.bootstrap, "Bootstrap replicas over runs (0: no intervals)")
        ->capture_default_str();
    cmd->add_option("--seed", o.seed, "Seed of the bootstrap draws")->capture_default_str();
  }
  cmd->add_option("--grid", o.points_per_decade, "Frontier grid points per decade of compute")
      ->capture_default_str();
  cmd->add_option("--fit-from", o.fit_from,
                  "Envelope part fitted: first-finish (from the first finished run's compute) or all")
      ->capture_default_str();
  cmd->add_flag("--include-failed", o.include_failed, "Keep runs whose status is \"failed\"");
}

// The parsed options as the study takes them; bad --metric, --compute or --fit-from values
// throw moba::Error.
inline scaling::StudyOptions study_options(const StudyCliOptions& o) {
  scaling::StudyOptions so;
  for (const std::string& m : o.metrics) so.metrics.push_back(scaling::Metric::parse(m));
  so.computes = parse_computes(o.compute);
  so.irreducible = o.irreducible;
  so.bootstrap = o.bootstrap;
  so.seed = o.seed;
  so.points_per_decade = o.points_per_decade;
  so.include_failed = o.include_failed;
  so.fit_from = scaling::parse_fit_from(o.fit_from);
  return so;
}

}  // namespace moba::cli
