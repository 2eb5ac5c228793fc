// A stand-in for the GPU ranks of `moba sweep --gpus N` (tests/cli/sweep_gpus_test.cpp):
// started by the launcher with a rank's command line,
//
//   sweep_rank_child train --config FILE --out RUN_DIR --device cuda --dist-timeout S
//                          --dist-check-every K [--resume] [--verbose]
//
// it plays `moba train`'s rank without a GPU: the NCCL id passes through the launcher's file
// (rank 0 publishes one, the others read it); every rank appends one line to $SWEEP_RANK_LOG
// (the run, its RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, NCCL_NVLS_ENABLE, the id it
// got and the id file's path, its arguments); rank 0 then writes the run folder as the trainer's rank 0 would:
// config.toml from FILE (refusing a folder that already holds a run, unless --resume, which
// needs the same configuration there), run.json "running", then "finished".
//
// $SWEEP_RANK_FAIL = "RUN:R": in run RUN, rank R prints an error and exits 2 once rank 0 has
// written run.json "running" (a failure in training); the other ranks of that run wait (as
// in a collective) until the launcher stops them. Bad arguments exit 64.
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/launcher.h"
#include "core/error.h"
#include "core/safe_io.h"
#include "train/config.h"

namespace fs = std::filesystem;

namespace {

// One line, one write, O_APPEND: the ranks' lines never interleave.
void append_line(const std::string& path, const std::string& line) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT, 0644);
  MOBA_CHECK(fd >= 0, "cannot open '", path, "'");
  const std::string text = line + "\n";
  const ssize_t n = ::write(fd, text.data(), text.size());
  ::close(fd);
  MOBA_CHECK(n == static_cast<ssize_t>(text.size()), "cannot write '", path, "'");
}

std::string env_or(const char* key, const char* fallback) {
  const char* v = std::getenv(key);
  return v ? v : fallback;
}

void write_status(const fs::path& run, const std::string& name, const std::string& status) {
  moba::write_file_atomic((run / "run.json").string(),
                          nlohmann::json{{"name", name}, {"status", status}}.dump() + "\n");
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  std::string config, out;
  bool resume = false;
  for (size_t i = 1; i < args.size(); ++i) {
    if (args[i] == "--config" && i + 1 < args.size()) config = args[++i];
    else if (args[i] == "--out" && i + 1 < args.size()) out = args[++i];
    else if (args[i] == "--resume") resume = true;
  }
  if (args.empty() || args[0] != "train" || config.empty() || out.empty()) {
    std::fprintf(stderr, "sweep_rank_child: expected `train --config FILE --out RUN_DIR ...`\n");
    return 64;
  }
  try {
    const auto env = moba::cli::rank_env();
    MOBA_CHECK(env.has_value(), "sweep_rank_child: not started by the launcher");
    std::string id;
    if (env->rank == 0) {
      id = "id-of-" + std::to_string(::getpid());
      id.resize(32, '.');
      moba::cli::publish_id(env->id_file, std::vector<char>(id.begin(), id.end()));
    } else {
      const std::vector<char> got =
          moba::cli::wait_for_id(env->id_file, 32, std::chrono::seconds(20));
      id.assign(got.begin(), got.end());
    }
    const moba::train::RunConfig cfg = moba::train::load_config(config);
    std::string joined;
    for (const std::string& a : args) joined += (joined.empty() ? "" : " ") + a;
    append_line(env_or("SWEEP_RANK_LOG", "/dev/null"),
                "run=" + cfg.name + " rank=" + env_or("RANK", "?") +
                    " world=" + env_or("WORLD_SIZE", "?") + " local_rank=" +
                    env_or("LOCAL_RANK", "?") + " local_world=" + env_or("LOCAL_WORLD_SIZE", "?") +
                    " nvls=" + env_or("NCCL_NVLS_ENABLE", "<unset>") + " id=" + id + " id_file=" + env->id_file +
                    " args=" + joined);

    const std::string fail = env_or("SWEEP_RANK_FAIL", "");
    const bool failing_run = fail.rfind(cfg.name + ":", 0) == 0;
    const bool me = failing_run && fail.substr(cfg.name.size() + 1) == std::to_string(env->rank);
    if (me) {
      // In training: after rank 0 has written the run folder (up to 20 s).
      for (int i = 0; i < 1000 && env->rank != 0 && !fs::exists(fs::path(out) / "run.json"); ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      std::fprintf(stderr, "sweep_rank_child: rank %d of %s fails on purpose\n", env->rank,
                   cfg.name.c_str());
      return 2;
    }
    if (env->rank != 0) {
      if (failing_run) std::this_thread::sleep_for(std::chrono::minutes(1));
      return 0;
    }
    // Rank 0: the run folder, as the trainer writes it.
    const fs::path run(out);
    if (resume) {
      MOBA_CHECK(fs::is_regular_file(run / "config.toml"), "--resume: '", out,
                 "' holds no run (no config.toml)");
      MOBA_CHECK(moba::train::run_config_diff(moba::train::load_run_config(out), cfg).empty(),
                 "--resume: the configuration differs from the one the run started with");
    } else {
      MOBA_CHECK(!fs::exists(run / "config.toml") && !fs::exists(run / "run.json"), "'", out,
                 "' already holds a run; pass --resume to continue it");
      fs::create_directories(run);
      moba::write_file_atomic((run / "config.toml").string(),
                              moba::train::run_config_text(cfg, out));
    }
    write_status(run, cfg.name, "running");
    if (failing_run) {  // another rank fails: rank 0 waits in its collective
      std::this_thread::sleep_for(std::chrono::minutes(1));
      return 0;
    }
    write_status(run, cfg.name, "finished");
    std::printf("finished: %s (stand-in)\n", cfg.name.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sweep_rank_child: %s\n", e.what());
    return 2;
  }
}
