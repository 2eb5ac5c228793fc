// moba eval: the validation of a saved checkpoint, in a fresh process. On the run's own data
// it prints the numbers of the trainer's validation at that step (the "val" line of
// metrics.jsonl), so that a run's last figure can be checked, or recomputed with the other
// attention (--attention full on a MoBA run, say). On any other prepared corpus (--data),
// split, number of windows or window length it gives the same measures there.
// `moba eval passkey` (cmd_eval_passkey.cpp) is the passkey-retrieval test.
#include <algorithm>
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

// The result for people: every measure in nats/token and in bits/byte.
void print_table(std::FILE* f, const train::EvalRunResult& r) {
  const double k = 1.0 / std::log(2.0) / r.bytes_per_token;  // nats/token -> bits/byte
  std::fprintf(f, "| measure | nats/token | bits/byte |\n|---|---:|---:|\n");
  std::fprintf(f, "| loss | %.4f | %.4f |\n", r.eval.loss, r.eval.loss * k);
  if (r.eval.trailing_loss)
    std::fprintf(f, "| trailing loss | %.4f | %.4f |\n", *r.eval.trailing_loss,
                 *r.eval.trailing_loss * k);
  else
    std::fprintf(f, "| trailing loss | n/a (no single-document window) | |\n");
  for (size_t i = 0; i < r.eval.bucket_losses.size(); ++i) {
    const int64_t a = static_cast<int64_t>(i) * r.eval.bucket_size;
    const int64_t e = std::min(r.seq_len, a + r.eval.bucket_size);
    std::fprintf(f, "| positions %lld-%lld | %.4f | %.4f |\n", static_cast<long long>(a),
                 static_cast<long long>(e - 1), r.eval.bucket_losses[i], r.eval.bucket_losses[i] * k);
  }
}

void run_eval(const EvalOptions& o) {
  const train::EvalRunResult r = train::evaluate_run(o.run);
  for (const std::string& n : r.notes) std::fprintf(stderr, "moba: note: %s\n", n.c_str());
  const double k = 1.0 / std::log(2.0) / r.bytes_per_token;
  nlohmann::json v = train::val_record(r.eval, r.state, r.moba);
  v["run"] = o.run.run_dir;
  v["data"] = r.data;
  v["split"] = r.split;
  v["seq_len"] = r.seq_len;
  v["device"] = o.run.device;
  v["bytes_per_token"] = r.bytes_per_token;
  v["bits_per_byte"] = r.eval.loss * k;
  std::vector<double> bucket_bits;
  for (double b : r.eval.bucket_losses) bucket_bits.push_back(b * k);
  v["bucket_bits_per_byte"] = bucket_bits;
  v["trailing_bits_per_byte"] = nullptr;
  if (r.eval.trailing_loss) v["trailing_bits_per_byte"] = *r.eval.trailing_loss * k;
  std::fprintf(stderr, "%s at step %lld, %s attention, on %s\n", o.run.run_dir.c_str(),
               static_cast<long long>(r.state.step), r.moba ? "MoBA" : "full", r.data.c_str());
  train::print_eval(stderr, r.state.step, r.eval);
  print_table(stderr, r);
  const std::string text = v.dump() + "\n";
  if (!o.json.empty()) train::write_file_atomic(o.json, v.dump(2) + "\n");
  std::fputs(text.c_str(), stdout);
}

}  // namespace

void add_eval(CLI::App& app) {
  static EvalOptions o;
  CLI::App* cmd = app.add_subcommand(
      "eval", "Validate a run's checkpoint: loss, position buckets, trailing loss; passkey test");
  // Not ->required(): `moba eval passkey --run ...` gives the subcommand's own --run.
  cmd->add_option("--run,-r", o.run.run_dir, "Run folder (config.toml and checkpoint/); required");
  cmd->add_option("--data", o.run.data_dir,
                  "Prepared token shards to validate on (default: the run's own data); its "
                  "tokenizer must be the run's");
  cmd->add_option("--split", o.run.split,
                  "Which split of the data the windows are cut from")
      ->check(CLI::IsMember({"val", "train"}))
      ->capture_default_str();
  cmd->add_option("--windows", o.run.windows,
                  "Number of windows (default: the run's eval.windows)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--seq-len", o.run.seq_len,
                  "Tokens each window predicts, at most model.seq_len (default: model.seq_len)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--bucket-size", o.run.bucket_size,
                  "Positions per loss bucket (default: the run's eval.bucket_size)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--attention", o.run.attention,
                  "auto: the attention of the checkpoint's last training step (MoBA before a "
                  "MoBA-to-full switch); moba or full to choose")
      ->check(CLI::IsMember({"auto", "moba", "full"}));
  add_device_option(cmd, o.run.device,
                    "cpu (float32) or cuda (bf16); cpu unless given, as in every command");
  cmd->add_option("--out,-o", o.json, "Also write the result (JSON) to this file");
  add_old_spelling(cmd, "--json", o.json, "--out");
  add_eval_passkey(cmd);
  cmd->callback([cmd] {
    if (!cmd->get_subcommands().empty()) return;  // `moba eval passkey` ran
    if (o.run.run_dir.empty()) throw CLI::RequiredError("--run");
    run_eval(o);
  });
}

}  // namespace moba::cli
