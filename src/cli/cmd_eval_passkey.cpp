// moba eval passkey: the passkey-retrieval test of a run's checkpoint (infer/passkey.h,
// docs/eval.md) over a grid of context lengths and depths, through the inference engine:
// OUTDIR/passkey.json (the table and every prompt's answer), passkey.png and passkey.svg
// (the heatmap; skipped in builds without cairo). Progress on stderr, the table on stdout.
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "core/safe_io.h"
#include "infer/engine.h"
#include "infer/passkey.h"

namespace moba::cli {
namespace {

std::string from_json;  // --from-json: redraw the figure of a passkey.json

// The figure again from a passkey.json (one written where the build had no cairo, such as a
// GPU machine without Debian's libraries), into -o.
void redraw(const std::string& json_path, const std::string& out_dir) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_regular_file(json_path, "passkey table"));
    infer::PasskeyTable t;
    t.lengths = j.at("lengths").get<std::vector<int64_t>>();
    t.depths = j.at("depths").get<std::vector<double>>();
    t.trials = j.at("trials").get<int64_t>();
    t.correct = j.at("correct").get<std::vector<std::vector<int64_t>>>();
    MOBA_CHECK(t.correct.size() == t.depths.size() && !t.correct.empty() &&
                   t.correct[0].size() == t.lengths.size(),
               "'", json_path, "': its table is not depths x lengths");
    std::string run = j.at("run").get<std::string>();
    while (!run.empty() && run.back() == '/') run.pop_back();
    run = run.substr(run.find_last_of('/') + 1);
    const std::string attention = j.at("attention").get<std::string>() == "moba"
                                      ? "MoBA, S = " + std::to_string(j.at("block_size").get<int64_t>()) +
                                            ", K = " + std::to_string(j.at("top_k").get<int64_t>())
                                      : "full attention";
    std::filesystem::create_directories(out_dir);
    const auto files = infer::write_passkey_figure(t, "Passkey retrieval: " + run + ", " + attention, out_dir);
    MOBA_CHECK(!files.empty(), "this build has no cairo: it cannot draw the figure");
    for (const std::string& f : files) std::fprintf(stderr, "passkey: wrote %s\n", f.c_str());
  } catch (const nlohmann::json::exception& e) {
    MOBA_CHECK(false, "'", json_path, "' is not a passkey.json of moba eval passkey: ", e.what());
  }
}

void run_passkey_cmd(const infer::PasskeyRunOptions& o) {
  if (!from_json.empty()) return redraw(from_json, o.out_dir);
  MOBA_CHECK(!o.run_dir.empty(), "--run is required (or --from-json to redraw a figure)");
  MOBA_CHECK(!o.grid.lengths.empty() && !o.grid.depths.empty(),
             "--lengths and --depths are required");
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
  cmd->add_option("--run,-r", o.run_dir, "Run folder (config.toml and checkpoint/)");
  cmd->add_option("--from-json", from_json,
                  "Redraw the heatmap of this passkey.json into -o instead (e.g. one written by a "
                  "build without cairo)");
  cmd->add_option("--data", o.data_dir,
                  "Prepared folder whose documents are the filler text, with the run's tokenizer "
                  "(default: the run's own data)");
  cmd->add_option("--lengths", o.grid.lengths,
                  "Prompt lengths in tokens, comma-separated; each plus the answer at most "
                  "model.seq_len")
      ->delimiter(',');
  cmd->add_option("--depths", o.grid.depths,
                  "Where the pass key sits, as fractions of the text in [0, 1], comma-separated")
      ->delimiter(',');
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
  add_device_option(cmd, o.device, "cpu (float32) or cuda (bf16)");
  cmd->add_option("--out,-o", o.out_dir, "Output folder: passkey.json, passkey.png, passkey.svg")
      ->capture_default_str();
  cmd->callback([] { run_passkey_cmd(o); });
}

}  // namespace moba::cli
