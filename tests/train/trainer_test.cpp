// The training loop: resume continues bit for bit, NaN/inf stops the run naming the step
// and the tensor while the last checkpoint stays intact, the run folder's files.
#include "train/trainer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "run_dir.h"
#include "json_lines.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/metrics.h"

namespace moba::train {
namespace {

using testing::TempDir;
using testing::read_lines;
using testing::read_json;
using testing::message_of;

// Tiny MoBA model with every feature that carries state across steps: gradient
// accumulation, warm-up + cosine, a layer-wise hybrid and a MoBA-to-full switch mid-run.
RunConfig tiny_config() {
  return parse_config(R"(
name = "resume"
[model]
vocab_size = 32
width = 32
layers = 2
heads = 4
kv_heads = 2
mlp_multiple_of = 16
seq_len = 32
tied_embeddings = false
[attention]
kind = "moba"
block_size = 8
top_k = 2
full_attention_last_layers = 1
moba_to_full_at = 0.6
[train]
batch_size = 2
grad_accum = 2
steps = 12
lr = 1e-2
warmup_steps = 3
[eval]
every = 5
windows = 3
batch_size = 2
[checkpoint]
every = 4
)",
                      "tiny.toml");
}

TEST(Trainer, ResumeIsBitExact) {
  TempDir dir;
  const RunConfig cfg = tiny_config();
  Trainer whole(cfg, {dir / "whole", "", false, nullptr});
  whole.run();
  // Interrupted after step 10: the checkpoint holds step 8, metrics.jsonl steps 1..10.
  {
    Trainer first(cfg, {dir / "split", "", false, nullptr});
    first.run(10);
    EXPECT_EQ(read_json(dir / "split/checkpoint/state.json")["step"], 8);
  }
  Trainer rest(cfg, {dir / "split", "", true, nullptr});
  EXPECT_EQ(rest.state().step, 8);
  rest.run();

  const auto a = read_lines(dir / "whole/metrics.jsonl"),
             b = read_lines(dir / "split/metrics.jsonl");
  ASSERT_EQ(a.size(), b.size()) << "a resumed run lists every step once";
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i]["kind"], b[i]["kind"]) << "line " << i;
    ASSERT_EQ(a[i]["step"], b[i]["step"]) << "line " << i;
    // Bit for bit: the doubles, not approximately.
    EXPECT_EQ(a[i]["loss"].get<double>(), b[i]["loss"].get<double>()) << "line " << i;
    EXPECT_EQ(a[i]["flops_exec"].get<double>(), b[i]["flops_exec"].get<double>()) << "line " << i;
    if (a[i]["kind"] == "train") {
      EXPECT_EQ(a[i]["grad_norm"].get<double>(), b[i]["grad_norm"].get<double>()) << "line " << i;
    }
  }
  const auto pa = whole.params(), pb = rest.params();
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i) ASSERT_EQ(pa[i], pb[i]) << "parameter " << i;
  EXPECT_EQ(read_json(dir / "split/run.json")["status"], "finished");
  EXPECT_EQ(read_json(dir / "split/run.json"), read_json(dir / "whole/run.json"));
}

TEST(Trainer, RunFolderFollowsTheContract) {
  TempDir dir;
  RunConfig cfg = tiny_config();
  Trainer(cfg, {dir / "run", "", false, nullptr}).run();  // ends, releasing the folder's lock
  const nlohmann::json run = read_json(dir / "run/run.json");
  for (const char* key : {"name", "attention", "block_size", "top_k", "layers", "heads", "kv_heads",
                          "width", "head_dim", "seq_len", "vocab_size", "params_non_embedding",
                          "params_total", "tokens_planned", "status", "bytes_per_token"})
    EXPECT_TRUE(run.contains(key)) << key;
  EXPECT_EQ(run["attention"], "hybrid");
  EXPECT_EQ(run["tokens_planned"], 12 * 2 * 2 * 32);
  const auto lines = read_lines(dir / "run/metrics.jsonl");
  int train = 0, val = 0;
  double last_tokens = 0;
  for (const auto& l : lines) {
    if (l["kind"] == "train") {
      ++train;
      for (const char* key : {"step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s",
                              "flops_6nd", "flops_exec", "elapsed_s"})
        EXPECT_TRUE(l.contains(key)) << key;
      EXPECT_GT(l["tokens"].get<double>(), last_tokens);
      last_tokens = l["tokens"].get<double>();
    } else {
      ++val;
      EXPECT_EQ(l["kind"], "val");
      EXPECT_EQ(l["bucket_size"], 4);
      EXPECT_EQ(l["bucket_losses"].size(), 8u);
      EXPECT_TRUE(l["trailing_loss"].is_number());
      EXPECT_EQ(l["windows"], 3);
    }
  }
  EXPECT_EQ(train, 12);
  EXPECT_EQ(val, 3);  // steps 5, 10 and the last
  // The resolved configuration reads back to itself.
  EXPECT_EQ(to_toml(load_config(dir / "run/config.toml")), to_toml(cfg));
  // A second run into the same folder needs --resume; a finished run resumes to nothing.
  EXPECT_NE(message_of([&] {
              Trainer(cfg, {dir / "run", "", false, nullptr});
            }).find("already holds a run; pass --resume"),
            std::string::npos);
  RunConfig other = cfg;
  other.train.lr = 0.5;
  EXPECT_NE(message_of([&] {
              Trainer(other, {dir / "run", "", true, nullptr});
            }).find("the configuration differs"),
            std::string::npos);
}

TEST(Trainer, NanLossStopsTheRunAndKeepsTheCheckpoint) {
  TempDir dir;
  auto t = std::make_unique<Trainer>(tiny_config(), TrainerOptions{dir / "run", "", false, nullptr});
  t->run(4);  // checkpoint at step 4
  const std::string state_before = read_json(dir / "run/checkpoint/state.json").dump();
  const auto& layout = t->model().layout();
  const float saved = t->params()[layout.find("layers.0.attn.wq")->offset];
  // Layer 0 uses MoBA: its gate meets the NaN first.
  t->params()[layout.find("layers.0.attn.wq")->offset] = std::numeric_limits<float>::quiet_NaN();
  std::string msg = message_of([&] { t->run(); });
  EXPECT_NE(msg.find("step 5: MoBA gate score is not finite"), std::string::npos) << msg;
  // Layer 1 uses full attention: the loss carries the NaN.
  t->params()[layout.find("layers.0.attn.wq")->offset] = saved;
  t->params()[layout.find("layers.1.attn.wq")->offset] = std::numeric_limits<float>::quiet_NaN();
  msg = message_of([&] { t->run(); });
  EXPECT_NE(msg.find("step 5: the training loss is NaN"), std::string::npos) << msg;
  EXPECT_EQ(read_json(dir / "run/run.json")["status"], "failed");
  EXPECT_EQ(read_json(dir / "run/checkpoint/state.json").dump(), state_before);
  // The intact checkpoint resumes (once the failed trainer has let go of the folder).
  t.reset();
  Trainer again(tiny_config(), {dir / "run", "", true, nullptr});
  EXPECT_EQ(again.state().step, 4);
  again.run(6);
}

TEST(Trainer, NonFiniteGradientNamesTheTensor) {
  model::ModelConfig mc = tiny_config().model;
  const model::ParamLayout layout = model::make_param_layout(mc);
  std::vector<float> g(layout.total, 0.5f);
  check_finite_gradients(layout, g, 7);  // all finite: no error
  g[layout.find("layers.1.mlp.w_up")->offset + 3] = std::numeric_limits<float>::infinity();
  const std::string msg = message_of([&] { check_finite_gradients(layout, g, 7); });
  EXPECT_NE(msg.find("step 7: the gradient of layers.1.mlp.w_up holds inf (element 3)"),
            std::string::npos)
      << msg;
}

TEST(Trainer, CorruptCheckpointIsAClearError) {
  TempDir dir;
  const RunConfig cfg = tiny_config();
  {
    Trainer t(cfg, {dir / "run", "", false, nullptr});
    t.run(4);
  }
  const std::string model_file = dir / "run/checkpoint/model.safetensors";
  const auto size = std::filesystem::file_size(model_file);
  std::filesystem::resize_file(model_file, size - 100);
  const std::string msg = message_of([&] { Trainer(cfg, {dir / "run", "", true, nullptr}); });
  EXPECT_NE(msg.find(model_file), std::string::npos) << msg;
  EXPECT_NE(msg.find("corrupt or truncated"), std::string::npos) << msg;
  {
    std::ofstream f(model_file, std::ios::binary | std::ios::trunc);
    f << "garbage";
  }
  EXPECT_NE(message_of([&] {
              Trainer(cfg, {dir / "run", "", true, nullptr});
            }).find(model_file),
            std::string::npos);
  std::filesystem::remove_all(dir / "run/checkpoint");
  std::filesystem::remove(dir / "run/config.toml");
  EXPECT_NE(message_of([&] {
              Trainer(cfg, {dir / "run", "", true, nullptr});
            }).find("holds no run (no config.toml)"),
            std::string::npos);
}

TEST(Metrics, TruncateKeepsStepsUpToTheCheckpoint) {
  TempDir dir;
  const std::string path = dir / "metrics.jsonl";
  {
    std::ofstream f(path);
    f << R"({"kind":"train","step":1})"
      << "\n"
      << R"({"kind":"train","step":2})"
      << "\n"
      << R"({"kind":"val","step":2})"
      << "\n"
      << R"({"kind":"train","step":3})"
      << "\n"
      << R"({"kind":"tra)";  // torn by a crash
  }
  truncate_metrics(path, 2);
  const auto lines = read_lines(path);
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[2]["kind"], "val");
}

}  // namespace
}  // namespace moba::train

namespace moba::train {
namespace {

using testing::message_of;
using testing::read_lines;
using testing::TempDir;

TEST(RunFolder, OneCommandAtATime) {
  TempDir dir;
  const RunConfig cfg = tiny_config();
  Trainer first(cfg, {dir / "run", "", false, nullptr});
  const std::string msg = message_of([&] { Trainer(cfg, {dir / "run", "", true, nullptr}); });
  EXPECT_NE(msg.find("is in use by another moba command (pid "), std::string::npos) << msg;
  first.run(2);
}

TEST(RunFolder, AForeignFolderIsNeverWrittenInto) {
  TempDir dir;
  std::filesystem::create_directories(dir / "mine");
  { std::ofstream(dir / "mine/notes.txt") << "my notes"; }
  const std::string msg =
      message_of([&] { Trainer(tiny_config(), {dir / "mine", "", false, nullptr}); });
  EXPECT_NE(msg.find("is not empty and holds no moba run (it has 'notes.txt')"), std::string::npos)
      << msg;
  EXPECT_FALSE(std::filesystem::exists(dir / "mine/config.toml"));
  { std::ofstream(dir / "file") << "x"; }
  EXPECT_NE(message_of([&] { Trainer(tiny_config(), {dir / "file", "", false, nullptr}); })
                .find("exists and is not a folder"),
            std::string::npos);
}

TEST(RunFolder, KilledBeforeTheFirstCheckpointResumesFromStepZero) {
  TempDir dir;
  RunConfig cfg = tiny_config();
  {
    Trainer t(cfg, {dir / "run", "", false, nullptr});
    t.run(3);  // "killed" at step 3: the first checkpoint is due at step 4
  }
  ASSERT_FALSE(has_checkpoint(dir / "run"));
  EXPECT_NE(message_of([&] { Trainer(cfg, {dir / "run", "", false, nullptr}); })
                .find("already holds a run; pass --resume"),
            std::string::npos);
  Trainer again(cfg, {dir / "run", "", true, nullptr});
  EXPECT_EQ(again.state().step, 0);
  again.run();
  Trainer whole(cfg, {dir / "whole", "", false, nullptr});
  whole.run();
  const auto a = read_lines(dir / "run/metrics.jsonl"), b = read_lines(dir / "whole/metrics.jsonl");
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i]["loss"], b[i]["loss"]) << "line " << i;
}

}  // namespace
}  // namespace moba::train

namespace moba::train {
namespace {

// Resume compares parsed configurations, not TOML text: the same run written another way
// (keys reordered, defaults spelled out, integers for floats, tokens instead of steps)
// resumes; a changed value is refused, naming the key and both values.
TEST(RunFolder, ResumeComparesParsedConfigurations) {
  TempDir dir;
  const RunConfig cfg = tiny_config();
  {
    Trainer first(cfg, {dir / "r", "", false, nullptr});
    first.run(4);
  }
  // 12 steps of 2 x 2 x 32 tokens = 1536 tokens; written as tokens, in another order.
  const RunConfig same = parse_config(R"(
[checkpoint]
every = 4
[eval]
windows = 3
batch_size = 2
every = 5
[train]
tokens = 1500
warmup_steps = 3
lr = 0.01
grad_accum = 2
batch_size = 2
weight_decay = 0.1   # the default, spelled out
[attention]
moba_to_full_at = 0.6
full_attention_last_layers = 1
top_k = 2
block_size = 8
[model]
tied_embeddings = false
seq_len = 32
mlp_multiple_of = 16
kv_heads = 2
heads = 4
layers = 2
width = 32
rope_theta = 10000   # an integer for a float
vocab_size = 32
)",
                                      "other.toml", {"name=resume"});
  ASSERT_TRUE(same_run_config(cfg, same));
  {
    Trainer again(same, {dir / "r", "", true, nullptr});
    EXPECT_EQ(again.state().step, 4);
  }
  RunConfig changed = cfg;
  changed.train.lr = 2e-2;
  changed.model.attention.top_k = 3;
  const std::string msg = message_of([&] { Trainer t(changed, {dir / "r", "", true, nullptr}); });
  EXPECT_NE(msg.find("differs from the one the run started with"), std::string::npos) << msg;
  EXPECT_NE(msg.find("train.lr: 0.01 -> 0.02"), std::string::npos) << msg;
  EXPECT_NE(msg.find("attention.top_k: 2 -> 3"), std::string::npos) << msg;
  // The same through --set on the run's own config.toml (moba train --resume --set ...).
  EXPECT_TRUE(same_run_config(load_run_config(dir / "r"), cfg));
  EXPECT_FALSE(same_run_config(load_run_config(dir / "r", {"train.lr=0.02"}), cfg));
}

// --device cuda with a configuration the GPU kernels cannot run stops before RUN_DIR is
// made, naming the limit, in every build.
TEST(RunFolder, UnsupportedDeviceConfigurationIsRefusedFirst) {
  TempDir dir;
  const std::string msg =
      message_of([&] { Trainer t(tiny_config(), {dir / "r", "", false, nullptr, "cuda"}); });
  EXPECT_NE(msg.find("model.head_dim = 8: the GPU attention kernels take head dims 64 and 128"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("attention.block_size = 8"), std::string::npos) << msg;
  EXPECT_FALSE(std::filesystem::exists(dir / "r"));
}

}  // namespace
}  // namespace moba::train
