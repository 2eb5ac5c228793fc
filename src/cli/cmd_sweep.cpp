// moba sweep --config sweeps/NAME.toml: plans a ladder of model sizes x attention types and
// trains them one after another into the runs folder (-o, default the preset's runs_dir;
// docs/sweep.md); with --gpus N each run data parallel over N GPUs (sweep_ranks.h,
// docs/distributed.md).
#include <cstdio>
#include <string>
#include <vector>

#include "core/error.h"

#include "cli/commands.h"
#include "cli/launcher.h"
#include "cli/sweep_ranks.h"
#include "scaling/sweep.h"
#include "train/data_parallel.h"

namespace moba::cli {

void add_sweep(CLI::App& app) {
  static scaling::SweepOptions o;
  static std::vector<std::string> sets;
  static bool schema = false;
  static bool device_given = false;
  static SweepRanksOptions ranks;
  CLI::App* cmd = app.add_subcommand(
      "sweep",
      "Train a scaling ladder (sizes x {full, MoBA}) from a preset; skips finished "
      "runs, resumes interrupted ones");
  cmd->add_option("--config,-c", o.config, "Sweep preset (TOML, see sweeps/)");
  cmd->add_option("--set", sets,
                  "Override a key of the preset: --set ladder.layers=[2,3] --set "
                  "base.model.seq_len=256 (TOML values; keys in docs/sweep.md); repeatable")
      ->allow_extra_args(false)
      ->type_name("KEY=VALUE");
  cmd->add_flag("--schema", schema,
                "Print the table of the preset's own keys (docs/sweep.md) and exit");
  cmd->add_option("--out,-o", o.runs_dir,
                  "Folder of the run folders (default: the preset's runs_dir, runs/NAME)");
  add_old_spelling(cmd, "--runs-dir", o.runs_dir, "--out");
  cmd->add_option("--data", o.data, "Token shards folder (overrides the preset's data)");
  cmd->add_option("--eval-data", o.eval_data,
                  "Every run validates on this prepared folder's val split (same tokenizer)");
  cmd->add_flag("--plan-only", o.plan_only,
                "Print the plan (parameters, tokens, FLOPs, time, "
                "data reads) and stop");
  cmd->add_option("--plan-json", o.plan_json,
                  "Also write the plan as JSON to FILE (plan.json's content; with --plan-only "
                  "too)")
      ->type_name("FILE");
  add_device_option(cmd, o.device,
                    "Where every run trains: cpu (float32) or cuda (bf16 mixed precision on the"
                    " GPU; needs a build with the CUDA kernels); cpu unless given, as in every "
                    "command")
      ->each([](const std::string&) { device_given = true; });
  cmd->add_option("--gpus", o.gpus,
                  "Train every run data parallel over N GPUs of this machine, one process per "
                  "GPU, the runs one after another (train.batch_size a multiple of N); implies "
                  "--device cuda (docs/distributed.md)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--dist-check-every", ranks.dist_check_every,
                  "With --gpus: compare the ranks' parameter checksums every this many steps "
                  "(as moba train)")
      ->capture_default_str();
  cmd->add_option("--dist-timeout", ranks.dist_timeout_s,
                  "With --gpus: seconds a rank waits for the others in a collective before its "
                  "run stops (as moba train)")
      ->capture_default_str();
  cmd->add_flag("--force-reuse", o.force_reuse,
                "Train even if a run would read its training "
                "data more than 4 times");
  cmd->add_flag("--verbose,-v", o.verbose,
                "Print each run's whole configuration as it starts (default: one line naming "
                "its config.toml)");
  cmd->callback([] {
    if (schema) {
      std::fputs(scaling::sweep_markdown().c_str(), stdout);
      return;
    }
    MOBA_CHECK(!o.config.empty(), "sweep: --config is required\n(`moba sweep --help` lists the options)");
    // --plan-only: the plan is the result (stdout). Training: the plan and the progress on
    // stderr, the closing summary on stdout.
    o.out = o.plan_only ? stdout : stderr;
    o.result = stdout;
    if (o.gpus > 0) {  // the same checks as `moba train --gpus`, before anything starts
      train::check_gpus_device(o.gpus, o.device, device_given);
      o.device = "cuda";
      MOBA_CHECK(ranks.dist_check_every >= 0, "--dist-check-every must be >= 0, got ",
                 ranks.dist_check_every);
      MOBA_CHECK(ranks.dist_timeout_s > 0, "--dist-timeout must be > 0 seconds, got ",
                 ranks.dist_timeout_s);
      ranks.gpus = o.gpus;
      ranks.program = self_executable();
      o.launch_ranks = sweep_rank_launcher(ranks);
    }
    scaling::run_sweep(scaling::load_sweep_config(o.config, sets), o);
  });
}

}  // namespace moba::cli
