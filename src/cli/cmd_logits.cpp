// moba logits --run RUN_DIR --tokens FILE --out FILE.safetensors: the model's logits on
// given token sequences (CPU, float32), for checking an export against another framework
// (docs/hf.md). FILE holds one sequence per line, token ids separated by white space; the
// output holds "logits.<i>" (T_i, V) per sequence i. Attention follows the run: each layer
// runs MoBA or full as at the checkpoint's step (--attention full|moba overrides).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "cli/commands.h"
#include "core/error.h"
#include "model/model.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/hf.h"
#include "train/trainer.h"
#include "train/safetensors.h"

namespace moba::cli {
namespace {

struct LogitsOptions {
  std::string run_dir, tokens, out, attention = "auto";
};

std::vector<std::vector<int32_t>> read_token_lines(const std::string& path) {
  std::ifstream f(path);
  MOBA_CHECK(f.good(), "logits: cannot read the tokens file '", path, "'");
  std::vector<std::vector<int32_t>> seqs;
  std::string line;
  int64_t line_no = 0;
  while (std::getline(f, line)) {
    ++line_no;
    std::istringstream is(line);
    std::vector<int32_t> ids;
    std::string word;
    while (is >> word) {
      size_t used = 0;
      long long v = 0;
      try {
        v = std::stoll(word, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      MOBA_CHECK(used == word.size() && v >= 0 && v <= INT32_MAX, "logits: '", path, "' line ",
                 line_no, ": '", word, "' is not a token id");
      ids.push_back(static_cast<int32_t>(v));
    }
    if (!ids.empty()) seqs.push_back(std::move(ids));
  }
  MOBA_CHECK(!seqs.empty(), "logits: '", path, "' holds no token ids");
  return seqs;
}

void run_logits(const LogitsOptions& o) {
  const std::string config_path = (std::filesystem::path(o.run_dir) / "config.toml").string();
  MOBA_CHECK(std::filesystem::exists(config_path), "logits: '", o.run_dir,
             "' is not a run folder (no config.toml)");
  const train::RunConfig cfg = train::load_run_config(o.run_dir).resolved();
  model::Model<float> model(cfg.model);
  std::vector<float> params(model.layout().total);
  const train::TrainState state = train::load_checkpoint_weights(o.run_dir, model.layout(), params);
  bool moba_phase = train::last_step_used_moba(cfg, state);
  if (o.attention != "auto") moba_phase = o.attention == "moba";
  MOBA_CHECK(o.attention != "moba" || cfg.model.attention.kind == model::AttentionKind::moba,
             "logits: --attention moba, but the run '", o.run_dir, "' has full attention only");
  const std::vector<std::vector<int32_t>> seqs = read_token_lines(o.tokens);
  model.keep_logits(true);
  std::vector<std::vector<float>> logits;
  std::vector<train::TensorView> views;
  const int64_t V = cfg.model.vocab_size;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const int64_t T = static_cast<int64_t>(seqs[i].size());
    MOBA_CHECK(T <= cfg.model.seq_len, "logits: sequence ", i, " holds ", T,
               " tokens, more than the model's seq_len ", cfg.model.seq_len);
    model::Batch b;
    b.B = 1;
    b.T = T;
    b.tokens = seqs[i];
    b.tokens.push_back(0);  // a target for the last position; its loss is not used
    model.forward(params, b, moba_phase);
    logits.emplace_back(model.logits().begin(), model.logits().end());
  }
  for (size_t i = 0; i < seqs.size(); ++i)
    views.push_back({"logits." + std::to_string(i), {static_cast<int64_t>(seqs[i].size()), V},
                     logits[i]});
  train::write_safetensors(o.out, views,
                           {{"sequences", std::to_string(seqs.size())},
                            {"step", std::to_string(state.step)},
                            {"attention", moba_phase ? "run" : "full"}});
  std::printf("logits: %zu sequence(s), vocab %lld, step %lld, %s attention -> %s\n", seqs.size(),
              static_cast<long long>(V), static_cast<long long>(state.step),
              moba_phase && cfg.model.attention.kind == model::AttentionKind::moba ? "MoBA"
                                                                                    : "full",
              o.out.c_str());
}

}  // namespace

void add_logits(CLI::App& app) {
  static LogitsOptions o;
  CLI::App* cmd = app.add_subcommand(
      "logits", "Write a run's logits on given token sequences (CPU, float32) as safetensors");
  cmd->add_option("--run", o.run_dir, "Run folder (config.toml + checkpoint/)")->required();
  cmd->add_option("--tokens", o.tokens,
                  "Text file: one sequence per line, token ids separated by white space")
      ->required();
  cmd->add_option("--out,-o", o.out, "Output .safetensors: logits.<i> (T_i, V) float32")
      ->required();
  cmd->add_option("--attention", o.attention,
                  "auto (the run's, at its checkpoint), full, or moba")
      ->check(CLI::IsMember({"auto", "full", "moba"}))
      ->capture_default_str();
  cmd->callback([] { run_logits(o); });
}

}  // namespace moba::cli
