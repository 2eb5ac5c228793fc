// The final validation of a run uses the attention of its last training step, and a saved
// checkpoint evaluates to the trainer's numbers: in this process (evaluate_run) and in a
// fresh one (`moba eval`), twice alike.
#include "train/eval_run.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "data/hash.h"
#include "data/prepare.h"
#include "data/tokenizer.h"

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

// --- Any prepared corpus, split, number and length of windows (moba eval --data ...). ---

// Byte-level shards of prose-like documents (some long, some short) in dir/<name>.
std::string prepare_text(const TempDir& dir, const std::string& name, const std::string& tokenizer) {
  std::mt19937_64 g(17);
  static const char* words[] = {"the", "river", "house", "night", "captain", "letter", "garden",
                                "window", "silence", "road", "and", "of", "a", "was", "in"};
  const std::filesystem::path docs = std::filesystem::path(dir / name) / "docs";
  std::filesystem::create_directories(docs);
  for (int d = 0; d < 24; ++d) {
    std::string text;
    const size_t bytes = d % 3 == 0 ? 40 : 900;
    while (text.size() < bytes) text += std::string(words[g() % 15]) + (g() % 9 ? " " : ".\n");
    std::ofstream(docs / ("d" + std::to_string(d) + ".txt")) << text;
  }
  data::PrepareConfig pc;
  pc.inputs = {docs.string()};
  pc.out_dir = dir / (name + "-" + tokenizer);
  pc.tokenizer = tokenizer;
  pc.vocab_size = 300;
  pc.val_fraction = 0.3;
  pc.threads = 1;
  pc.progress = false;
  data::prepare(pc, nullptr);
  return pc.out_dir;
}

RunConfig shard_config(const std::string& data) {
  RunConfig c = moba_config(1.0);
  c.model.vocab_size = 256;
  c.model.seq_len = 64;
  c.model.attention.block_size = 16;
  c.eval.windows = 5;
  c.eval.bucket_size = 16;
  c.data = data;
  return c;
}

// The windows `moba eval` should use, evaluated here without evaluate_run: the model on
// Dataset::validation_windows of the split.
EvalResult direct(const std::string& run, const std::string& data, int64_t T, int64_t n,
                  data::Split split, int64_t bucket, bool moba) {
  RunConfig cfg = load_run_config(run).resolved();
  model::Model<float> m(cfg.model);
  std::vector<float> params(m.layout().total);
  load_checkpoint_weights(run, m.layout(), params);
  const data::Batch v = data::Dataset::open(data).validation_windows(T, n, split);
  std::vector<Window> w;
  for (int64_t i = 0; i < v.B; ++i)
    w.push_back({std::vector<int32_t>(v.row(i), v.row(i) + T + 1), v.single_document[i] != 0});
  return evaluate(m, params, w, cfg.eval.batch_size, bucket, moba);
}

TEST(EvalRun, OnShardsTheDefaultsAreTheTrainersLastValidation) {
  TempDir dir;
  const std::string data = prepare_text(dir, "text", "byte");
  Trainer(shard_config(data), {dir / "run", "", false, nullptr}).run();
  const nlohmann::json val = last_val(dir / "run/metrics.jsonl");
  const EvalRunResult r = evaluate_run({dir / "run", "", "auto", "cpu"});
  EXPECT_EQ(r.eval.loss, val["loss"].get<double>());
  EXPECT_EQ(r.eval.bucket_losses, val["bucket_losses"].get<std::vector<double>>());
  EXPECT_EQ(r.eval.windows_hash, val["windows_hash"].get<std::string>());
  EXPECT_EQ(r.seq_len, 64);
  EXPECT_EQ(r.split, "val");
  // --data naming the run's own folder: the same numbers.
  const EvalRunResult same = evaluate_run({dir / "run", data, "auto", "cpu"});
  EXPECT_EQ(same.eval.loss, r.eval.loss);
  EXPECT_TRUE(same.notes.empty());
}

TEST(EvalRun, WindowsSeqLenBucketsAndSplitAreTheDatasetsWindows) {
  TempDir dir;
  const std::string data = prepare_text(dir, "text", "byte");
  Trainer(shard_config(data), {dir / "run", "", false, nullptr}).run();
  const EvalRunResult base = evaluate_run({dir / "run", "", "auto", "cpu"});
  struct Variant {
    std::string split;
    int64_t windows, seq_len, bucket;
  };
  for (const Variant& v : {Variant{"val", 3, 0, 0}, Variant{"val", 0, 32, 0},
                           Variant{"val", 7, 40, 8}, Variant{"train", 0, 0, 0},
                           Variant{"train", 9, 16, 4}}) {
    SCOPED_TRACE(v.split + " windows " + std::to_string(v.windows) + " seq_len " +
                 std::to_string(v.seq_len) + " bucket " + std::to_string(v.bucket));
    EvalRunOptions o{dir / "run", "", "auto", "cpu"};
    o.split = v.split;
    o.windows = v.windows;
    o.seq_len = v.seq_len;
    o.bucket_size = v.bucket;
    const EvalRunResult r = evaluate_run(o);
    const int64_t T = v.seq_len ? v.seq_len : 64, n = v.windows ? v.windows : 5,
                  b = v.bucket ? v.bucket : 16;
    const EvalResult want = direct(dir / "run", data, T, n,
                                   v.split == "train" ? data::Split::train : data::Split::val, b,
                                   true);
    EXPECT_EQ(r.eval.windows, n);
    EXPECT_EQ(r.seq_len, T);
    EXPECT_EQ(r.eval.bucket_size, b);
    EXPECT_EQ(r.eval.bucket_losses.size(), static_cast<size_t>((T + b - 1) / b));
    EXPECT_EQ(r.eval.windows_hash, want.windows_hash);
    EXPECT_EQ(r.eval.loss, want.loss);
    EXPECT_EQ(r.eval.bucket_losses, want.bucket_losses);
    EXPECT_EQ(r.eval.trailing_loss, want.trailing_loss);
    EXPECT_NE(r.eval.windows_hash, base.eval.windows_hash) << "other windows than the default";
  }
}

TEST(EvalRun, ForeignDataIsCheckedAndBadOptionsAreNamed) {
  TempDir dir;
  const std::string bytes = prepare_text(dir, "text", "byte");
  Trainer(shard_config(bytes), {dir / "run", "", false, nullptr}).run();
  const auto msg = [&](EvalRunOptions o) { return message_of([&] { evaluate_run(o); }); };
  EvalRunOptions o{dir / "run", "", "auto", "cpu"};
  o.seq_len = 65;
  EXPECT_NE(msg(o).find("--seq-len 65 exceeds the model's context (model.seq_len = 64)"),
            std::string::npos);
  o.seq_len = 0;
  o.split = "test";
  EXPECT_NE(msg(o).find("--split must be val or train, got 'test'"), std::string::npos);
  o.split = "val";
  o.windows = -1;
  EXPECT_NE(msg(o).find("--windows must be >= 1"), std::string::npos);
  o.windows = 0;
  // Another tokenizer than the run's data: named, with both folders.
  if (data::have_sentencepiece()) {
    const std::string bpe = prepare_text(dir, "bpe", "bpe");
    o.data_dir = bpe;
    const std::string m = msg(o);
    EXPECT_NE(m.find("--data '" + bpe + "' was tokenized with"), std::string::npos) << m;
    EXPECT_NE(m.find("the training data '" + bytes + "'"), std::string::npos) << m;
  }
  // A run whose vocabulary (32, the synthetic task's) is below the data's (256).
  Trainer(moba_config(1.0), {dir / "small", "", false, nullptr}).run();
  const std::string m = msg({dir / "small", bytes, "auto", "cpu"});
  EXPECT_NE(m.find("the data's vocabulary (256, byte) is larger than the model's (32)"),
            std::string::npos) << m;
  // The synthetic source has no training split to cut windows from.
  EvalRunOptions s{dir / "small", "", "auto", "cpu"};
  s.split = "train";
  EXPECT_NE(msg(s).find("--split train: the synthetic source"), std::string::npos);
  // Windows of a shorter length on the synthetic task: its own validation, shorter.
  s.split = "val";
  s.seq_len = 16;
  const EvalRunResult r = evaluate_run(s);
  EXPECT_EQ(r.seq_len, 16);
  EXPECT_EQ(r.eval.position_losses.size(), 16u);
  EXPECT_EQ(r.eval.windows, 4);
}

#ifdef MOBA_BIN
// `moba eval` in a fresh process, twice: the trainer's last validation, identical both times.
std::string run_eval_cli(const std::string& run, const std::string& json) {
  const std::string cmd = std::string(MOBA_BIN) + " eval --run " + run + " --json " + json +
                          " > /dev/null 2>&1";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  return json;
}

TEST(EvalCli, OptionsReachTheEvaluation) {
  TempDir dir;
  const std::string data = prepare_text(dir, "text", "byte");
  Trainer(shard_config(data), {dir / "run", "", false, nullptr}).run();
  const std::string json = dir / "e.json";
  const std::string cmd = std::string(MOBA_BIN) + " eval --run " + dir / "run" + " --data " + data +
                          " --split train --windows 3 --seq-len 24 --bucket-size 6 -o " + json +
                          " > /dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const nlohmann::json a = read_json(json);
  EvalRunOptions o{dir / "run", data, "auto", "cpu"};
  o.split = "train";
  o.windows = 3;
  o.seq_len = 24;
  o.bucket_size = 6;
  const EvalRunResult r = evaluate_run(o);
  EXPECT_EQ(a["loss"].get<double>(), r.eval.loss);
  EXPECT_EQ(a["bucket_losses"].get<std::vector<double>>(), r.eval.bucket_losses);
  EXPECT_EQ(a["windows"], 3);
  EXPECT_EQ(a["seq_len"], 24);
  EXPECT_EQ(a["split"], "train");
  EXPECT_EQ(a["bucket_size"], 6);
  // bits/byte: byte-level tokens, so nats / ln 2.
  EXPECT_DOUBLE_EQ(a["bits_per_byte"].get<double>(), r.eval.loss / std::log(2.0));
  EXPECT_EQ(a["bucket_bits_per_byte"].size(), 4u);
  EXPECT_DOUBLE_EQ(a["bucket_bits_per_byte"][3].get<double>(), r.eval.bucket_losses[3] / std::log(2.0));
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
