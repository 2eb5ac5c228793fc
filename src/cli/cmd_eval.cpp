// moba eval: the validation of a saved checkpoint, in a fresh process. On the run's own data
// it prints the numbers of the trainer's validation at that step (the "val" line of
// metrics.jsonl), so that a run's last figure can be checked, or recomputed with the other
// attention (--attention full on a MoBA run, say).
#include <cmath>
#include <cstdio>
#include <string>

#include "cli/commands.h"
#include "core/error.h"
#include "train/eval_run.h"
#include "train/metrics.h"
#include "train/progress.h"

namespace moba::cli {
namespace {

struct EvalOptions {
  train::EvalRunOptions run;
  std::string json;
};

void run_eval(const EvalOptions& o) {
  const train::EvalRunResult r = train::evaluate_run(o.run);
  nlohmann::json v = train::val_record(r.eval, r.state, r.moba);
  v["run"] = o.run.run_dir;
  v["data"] = r.data;
  v["device"] = o.run.device;
  v["bits_per_byte"] = r.eval.loss / std::log(2.0) / r.bytes_per_token;
  std::fprintf(stderr, "%s at step %lld, %s attention, on %s\n", o.run.run_dir.c_str(),
               static_cast<long long>(r.state.step), r.moba ? "MoBA" : "full", r.data.c_str());
  train::print_eval(stderr, r.state.step, r.eval);
  const std::string text = v.dump() + "\n";
  if (!o.json.empty()) train::write_file_atomic(o.json, v.dump(2) + "\n");
  std::fputs(text.c_str(), stdout);
}

}  // namespace

void add_eval(CLI::App& app) {
  static EvalOptions o;
  CLI::App* cmd = app.add_subcommand(
      "eval", "Validate a run's checkpoint: loss, position buckets, trailing loss");
  cmd->add_option("--run,-r", o.run.run_dir, "Run folder (config.toml and checkpoint/)")
      ->required();
  cmd->add_option("--data", o.run.data_dir,
                  "Prepared token shards to validate on (default: the run's own data)");
  cmd->add_option("--attention", o.run.attention,
                  "auto: the attention of the checkpoint's last training step (MoBA before a "
                  "MoBA-to-full switch); moba or full to choose")
      ->check(CLI::IsMember({"auto", "moba", "full"}));
  cmd->add_option("--device", o.run.device,
                  "cpu (float32) or cuda (bf16); cpu unless given, as in every command")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  cmd->add_option("--out,-o", o.json, "Also write the result (JSON) to this file");
  add_old_spelling(cmd, "--json", o.json, "--out");
  cmd->callback([] { run_eval(o); });
}

}  // namespace moba::cli
