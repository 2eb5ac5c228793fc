// moba eval passkey: the passkey-retrieval test of a run's checkpoint (infer/passkey.h,
// docs/eval.md) over a grid of context lengths and depths, through the inference engine:
// OUTDIR/passkey.json (the table and every prompt's answer), passkey.png and passkey.svg
// (the heatmap; skipped in builds without cairo). Progress on stderr, the table on stdout.
#include <cstdio>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "infer/engine.h"
#include "infer/passkey.h"

namespace moba::cli {
namespace {

void run_passkey_cmd(const infer::PasskeyRunOptions& o) {
  const nlohmann::json j = infer::run_passkey(o, infer::make_engine, stderr);
  // The tables, rows = depths, columns = lengths: accuracy, then the teacher-forced loss of
  // the key's answer against the decoy's (nats/token; lower for the key = the needle is read).
  const auto table = [&](const char* title, const auto& cell) {
    std::printf("%s\n\n| depth \\ length |", title);
    for (const auto& l : j["lengths"]) std::printf(" %lld |", static_cast<long long>(l.get<int64_t>()));
    std::printf("\n|---|");
    for (size_t i = 0; i < j["lengths"].size(); ++i) std::printf("---:|");
    std::printf("\n");
    for (size_t d = 0; d < j["depths"].size(); ++d) {
      std::printf("| %.2f |", j["depths"][d].get<double>());
      for (size_t l = 0; l < j["lengths"].size(); ++l) std::printf(" %s |", cell(d, l).c_str());
      std::printf("\n");
    }
    std::printf("\n");
  };
  table("Accuracy of the greedy continuation", [&](size_t d, size_t l) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f", j["accuracy"][d][l].get<double>());
    return std::string(buf);
  });
  table("Answer loss, key / decoy (nats per token, teacher-forced)", [&](size_t d, size_t l) {
    char buf[48];
    std::snprintf(buf, sizeof buf, "%.2f / %.2f", j["key_nll"][d][l].get<double>(),
                  j["decoy_nll"][d][l].get<double>());
    return std::string(buf);
  });
  std::printf("mean accuracy %.3f over %zu prompts (%s)\n", j["mean_accuracy"].get<double>(),
              j["cases"].size(), j["attention_label"].get<std::string>().c_str());
}

}  // namespace

void add_eval_passkey(CLI::App* eval) {
  static infer::PasskeyRunOptions o;
  o.out_dir = "passkey";
  CLI::App* cmd = eval->add_subcommand(
      "passkey", "Passkey retrieval over context lengths and depths: a heatmap and a JSON table");
  cmd->add_option("--run,-r", o.run_dir, "Run folder (config.toml and checkpoint/)")->required();
  cmd->add_option("--data", o.data_dir,
                  "Prepared folder whose documents are the filler text, with the run's tokenizer "
                  "(default: the run's own data)");
  cmd->add_option("--lengths", o.grid.lengths,
                  "Prompt lengths in tokens, comma-separated; each plus the answer at most "
                  "model.seq_len")
      ->delimiter(',')
      ->required();
  cmd->add_option("--depths", o.grid.depths,
                  "Where the pass key sits, as fractions of the text in [0, 1], comma-separated")
      ->delimiter(',')
      ->required();
  cmd->add_option("--trials", o.grid.trials, "Prompts per (length, depth) cell")
      ->capture_default_str();
  cmd->add_option("--seed", o.grid.seed, "Seed of the keys and filler positions")
      ->capture_default_str();
  cmd->add_option("--digits", o.grid.digits, "Digits of the pass key")->capture_default_str();
  cmd->add_option("--batch", o.batch, "Prompts the engine runs together")->capture_default_str();
  cmd->add_option("--attention", o.attention,
                  "auto: the attention of the checkpoint's last training step; moba or full")
      ->check(CLI::IsMember({"auto", "moba", "full"}))
      ->capture_default_str();
  cmd->add_option("--device", o.device, "cpu (float32) or cuda (bf16)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  cmd->add_option("--out,-o", o.out_dir, "Output folder: passkey.json, passkey.png, passkey.svg")
      ->capture_default_str();
  cmd->callback([] { run_passkey_cmd(o); });
}

}  // namespace moba::cli
