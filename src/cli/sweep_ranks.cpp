#include "cli/sweep_ranks.h"

#include <filesystem>
#include <sstream>

#include "cli/launcher.h"
#include "core/error.h"
#include "core/safe_io.h"
#include "train/config.h"

namespace moba::cli {
namespace fs = std::filesystem;
namespace {

// A number as `moba train` parses it back exactly (max_digits10).
std::string exact(double x) {
  std::ostringstream s;
  s.precision(17);
  s << x;
  return s.str();
}

}  // namespace

std::vector<std::string> sweep_rank_command(const SweepRanksOptions& o,
                                            const std::string& config_file,
                                            const scaling::RankRun& run) {
  std::vector<std::string> argv = {o.program,
                                   "train",
                                   "--config",
                                   config_file,
                                   "--out",
                                   run.run_dir,
                                   "--device",
                                   "cuda",
                                   "--dist-timeout",
                                   exact(o.dist_timeout_s),
                                   "--dist-check-every",
                                   std::to_string(o.dist_check_every)};
  if (run.resume) argv.push_back("--resume");
  if (run.verbose) argv.push_back("--verbose");
  return argv;
}

std::function<void(const scaling::RankRun&)> sweep_rank_launcher(SweepRanksOptions o) {
  MOBA_CHECK(o.gpus >= 1, "--gpus must be >= 1, got ", o.gpus);
  MOBA_CHECK(!o.program.empty(), "internal: the sweep's rank program is not set");
  return [o](const scaling::RankRun& run) {
    MOBA_CHECK(run.config != nullptr, "internal: a sweep run without a configuration");
    // One run's configuration and NCCL id, removed after the run.
    const TempFolder folder("moba-sweep", "a run's ranks");
    const std::string config_file = (folder.path() / (run.config->name + ".toml")).string();
    write_file_atomic(config_file, train::to_toml(*run.config));
    LaunchOptions l;
    l.ranks = o.gpus;
    l.command = sweep_rank_command(o, config_file, run);
    l.id_dir = folder.path().string();
    l.grace = o.grace;
    l.kill_grace = o.kill_grace;
    l.log = o.log;
    l.stdout_to_stderr = true;
    launch(l);
  };
}

}  // namespace moba::cli
