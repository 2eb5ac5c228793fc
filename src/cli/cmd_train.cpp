// moba train: trains a model from a TOML configuration into a run folder
// (docs/trainer.md; the folder's format is docs/run_format.md).
#include <filesystem>
#include <cstdio>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "train/config.h"
#include "train/trainer.h"

namespace moba::cli {
namespace {

struct TrainOptions {
  std::string config;
  std::string out;
  std::string data;
  std::string eval_data;
  bool resume = false;
  std::string device = "cpu";
  bool verbose = false;
  std::vector<std::string> sets;  // --set key=value, in order
  bool schema = false;
};

void run_train(const TrainOptions& o) {
  if (o.schema) {  // docs/trainer.md's table of keys
    std::fputs(train::config_markdown().c_str(), stdout);
    return;
  }
  // Not CLI11's required(): --schema needs no --out. The same words as CLI11's.
  MOBA_CHECK(!o.out.empty(), "train: --out is required\n(`moba train --help` lists the options)");
  MOBA_CHECK(!o.config.empty() || o.resume,
             "--config X.toml is required (with --resume it defaults to RUN_DIR/config.toml)");
  // A run's own config.toml holds data paths relative to the run folder (load_run_config).
  train::RunConfig cfg = o.config.empty() ? train::load_run_config(o.out, o.sets)
                                          : train::load_config(o.config, o.sets);
  if (!o.eval_data.empty()) cfg.eval.data = o.eval_data;
  // Progress (the summary, step and validation lines) on stderr; the closing line on stdout.
  train::Trainer trainer(cfg, {o.out, o.data, o.resume, stderr, o.device, o.verbose, stdout});
  trainer.run();
}

}  // namespace

void add_train(CLI::App& app) {
  static TrainOptions o;
  CLI::App* cmd = app.add_subcommand("train", "Train a model (CPU, or GPU with --device cuda) from a TOML configuration");
  cmd->add_option("--config,-c", o.config, "Run configuration (TOML; see configs/)");
  cmd->add_option("--out,-o", o.out,
                  "Run folder: config.toml, run.json, metrics.jsonl, "
                  "checkpoint/");
  cmd->add_option("--data", o.data, "Token shards folder (overrides the config's data)");
  cmd->add_option("--eval-data", o.eval_data,
                  "Validate on this prepared folder's val split (text the training never saw, "
                  "same tokenizer); sets eval.data");
  cmd->add_option("--set", o.sets,
                  "Override a key of the configuration: --set model.width=512 --set "
                  "attention.top_k=4 (TOML values; every key in docs/trainer.md); repeatable")
      ->allow_extra_args(false)
      ->type_name("KEY=VALUE");
  cmd->add_flag("--schema", o.schema,
                "Print the table of every configuration key (docs/trainer.md) and exit");
  cmd->add_flag("--resume", o.resume, "Continue the run in --out from its checkpoint");
  add_device_option(cmd, o.device,
                    "cpu (float32, OpenBLAS) or cuda (bf16 mixed precision on the GPU; "
                    "docs/trainer_gpu.md); cpu unless given, as in every command");
  cmd->add_flag("--verbose,-v", o.verbose,
                "Print the whole configuration at the start (default: one line naming "
                "RUN_DIR/config.toml)");
  cmd->callback([] { run_train(o); });
}

}  // namespace moba::cli
