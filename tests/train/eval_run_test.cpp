// The final validation of a run uses the attention of its last training step, and a saved
// checkpoint evaluates to the trainer's numbers: in this process (evaluate_run) and in a
// fresh one (`moba eval`), twice alike.
#include "train/eval_run.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "json_lines.h"
#include "run_dir.h"
#include "train/config.h"
#include "train/trainer.h"

namespace moba::train {
namespace {

using testing::message_of;
using testing::read_json;
using testing::read_lines;
using testing::TempDir;

// T = 32, S = 8, K = 2: four blocks, so MoBA and full attention give different losses.
RunConfig moba_config(double moba_to_full_at) {
  RunConfig c = parse_config(R"(
name = "eval"
[model]
vocab_size = 32
width = 32
layers = 2
heads = 4
kv_heads = 2
mlp_multiple_of = 16
seq_len = 32
[attention]
kind = "moba"
block_size = 8
top_k = 2
[train]
batch_size = 2
steps = 10
lr = 1e-2
warmup_steps = 2
[eval]
every = 5
windows = 4
batch_size = 2
[checkpoint]
every = 5
)",
                             "eval.toml");
  c.model.attention.moba_to_full_at = moba_to_full_at;
  return c;
}

nlohmann::json last_val(const std::string& metrics) {
  nlohmann::json v;
  for (const auto& l : read_lines(metrics))
    if (l["kind"] == "val") v = l;
  return v;
}

TEST(LastStepAttention, FollowsTheSwitch) {
  const RunConfig c = moba_config(0.5);  // 10 steps of 64 tokens: steps 1-5 MoBA, 6-10 full
  const int64_t per_step = 64;
  TrainState s;
  EXPECT_TRUE(last_step_used_moba(c, s));  // before any step: the first step's attention
  for (int64_t step = 1; step <= 10; ++step) {
    s.step = step;
    s.tokens = step * per_step;
    EXPECT_EQ(last_step_used_moba(c, s), step <= 5) << "step " << step;
  }
  // No switch (moba_to_full_at = 1): the last step, at tokens == tokens_planned, was MoBA.
  EXPECT_TRUE(last_step_used_moba(moba_config(1.0), s));
}

TEST(EvalRun, FinalValidationOfAMobaRunUsesMoba) {
  TempDir dir;
  Trainer t(moba_config(1.0), {dir / "run", "", false, nullptr});
  t.run();
  const nlohmann::json val = last_val(dir / "run/metrics.jsonl");
  ASSERT_EQ(val["step"], 10);
  EXPECT_EQ(val["attention"], "moba");

  const EvalRunResult moba = evaluate_run({dir / "run", "", "auto", "cpu"});
  EXPECT_TRUE(moba.moba);
  EXPECT_EQ(moba.state.step, 10);
  // The same weights, windows and code: equal to the last bit.
  EXPECT_EQ(moba.eval.loss, val["loss"].get<double>());
  EXPECT_EQ(moba.eval.bucket_losses, val["bucket_losses"].get<std::vector<double>>());
  // Full attention on the MoBA-trained weights is another number (what the bug reported).
  const EvalRunResult full = evaluate_run({dir / "run", "", "full", "cpu"});
  EXPECT_FALSE(full.moba);
  EXPECT_NE(full.eval.loss, moba.eval.loss);
}

// Val lines carry each window's loss (their mean is the loss) and a hash of the windows,
// equal for a MoBA run and its full-attention twin: what the study's paired intervals need.
TEST(EvalRun, ValLinesCarryWindowLossesForPairing) {
  TempDir dir;
  RunConfig full = moba_config(1.0);
  full.model.attention.kind = model::AttentionKind::full;
  Trainer(moba_config(1.0), {dir / "moba", "", false, nullptr}).run();
  Trainer(full, {dir / "full", "", false, nullptr}).run();
  const nlohmann::json m = last_val(dir / "moba/metrics.jsonl"),
                       f = last_val(dir / "full/metrics.jsonl");
  for (const nlohmann::json* v : {&m, &f}) {
    const auto w = (*v)["window_losses"].get<std::vector<double>>();
    ASSERT_EQ(w.size(), 4u);
    double s = 0;
    for (double x : w) s += x;
    EXPECT_NEAR(s / 4, (*v)["loss"].get<double>(), 1e-12);
    ASSERT_EQ((*v)["window_bucket_losses"].size(), 4u);
    EXPECT_EQ((*v)["window_bucket_losses"][0].size(), (*v)["bucket_losses"].size());
  }
  EXPECT_EQ(m["windows_hash"], f["windows_hash"]);
  EXPECT_EQ(m["windows_hash"].get<std::string>().size(), 16u);
  EXPECT_NE(m["window_losses"], f["window_losses"]);
}

TEST(EvalRun, AfterTheSwitchValidationIsFull) {
  TempDir dir;
  Trainer t(moba_config(0.5), {dir / "run", "", false, nullptr});
  t.run();
  std::vector<std::string> seen;
  for (const auto& l : read_lines(dir / "run/metrics.jsonl"))
    if (l["kind"] == "val") seen.push_back(l["attention"]);
  // Step 5 was the last MoBA step (tokens before it 256 < 320); step 10 ran full attention.
  EXPECT_EQ(seen, (std::vector<std::string>{"moba", "full"}));
  const EvalRunResult r = evaluate_run({dir / "run", "", "auto", "cpu"});
  EXPECT_FALSE(r.moba);
  EXPECT_EQ(r.eval.loss, last_val(dir / "run/metrics.jsonl")["loss"].get<double>());
}

TEST(EvalRun, BadInputIsNamed) {
  TempDir dir;
  EXPECT_NE(message_of([&] { evaluate_run({dir / "none", "", "auto", "cpu"}); })
                .find("is not a folder"),
            std::string::npos);
  EXPECT_NE(message_of([&] { evaluate_run({dir.str(), "", "auto", "cpu"}); })
                .find("not a run folder (no config.toml)"),
            std::string::npos);
  RunConfig full = moba_config(1.0);
  full.model.attention.kind = model::AttentionKind::full;
  full.train.steps = 2;
  Trainer(full, {dir / "full", "", false, nullptr}).run();
  EXPECT_NE(message_of([&] { evaluate_run({dir / "full", "", "moba", "cpu"}); })
                .find("has no MoBA layers"),
            std::string::npos);
  EXPECT_NE(message_of([&] { evaluate_run({dir / "full", "", "sparse", "cpu"}); })
                .find("--attention must be auto, moba or full"),
            std::string::npos);
}

#ifdef MOBA_BIN
// `moba eval` in a fresh process, twice: the trainer's last validation, identical both times.
std::string run_eval_cli(const std::string& run, const std::string& json) {
  const std::string cmd = std::string(MOBA_BIN) + " eval --run " + run + " --json " + json +
                          " > /dev/null 2>&1";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  return json;
}

TEST(EvalCli, FreshProcessGivesTheTrainersNumbersTwice) {
  TempDir dir;
  Trainer(moba_config(1.0), {dir / "run", "", false, nullptr}).run();
  const nlohmann::json val = last_val(dir / "run/metrics.jsonl");
  const nlohmann::json a = read_json(run_eval_cli(dir / "run", dir / "a.json"));
  const nlohmann::json b = read_json(run_eval_cli(dir / "run", dir / "b.json"));
  for (const char* key : {"step", "tokens", "attention", "loss", "bucket_losses",
                          "trailing_loss", "windows", "flops_6nd", "flops_exec"}) {
    EXPECT_EQ(a[key], val[key]) << key;
    EXPECT_EQ(a[key], b[key]) << key;
  }
}
#endif

}  // namespace
}  // namespace moba::train
