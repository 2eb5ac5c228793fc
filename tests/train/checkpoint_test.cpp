// Checkpoints: every tensor file is checksummed (a flipped byte is an error naming the
// file), and a complete checkpoint is found after a crash at any point of a save's swap,
// also after two crashes in a row.
#include "train/checkpoint.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "json_lines.h"
#include "model/params.h"
#include "run_dir.h"
#include "train/adamw.h"
#include "train/config.h"

namespace moba::train {
namespace {
namespace fs = std::filesystem;

using testing::message_of;
using testing::read_json;
using testing::TempDir;

struct Fixture {
  RunConfig cfg = parse_config(R"(
[model]
vocab_size = 16
width = 16
layers = 1
heads = 2
mlp_multiple_of = 16
seq_len = 8
[train]
steps = 1
)",
                               "ckpt.toml")
                      .resolved();
  model::ParamLayout layout = model::make_param_layout(cfg.model);
  std::vector<float> params = std::vector<float>(layout.total);
  AdamW adam{layout, cfg.train};

  // A checkpoint of `step` whose parameters all equal `step`.
  void save(const std::string& run, int64_t step) {
    std::fill(params.begin(), params.end(), static_cast<float>(step));
    TrainState s;
    s.step = step;
    s.tokens = step * 8;
    save_checkpoint(run, layout, params, adam, s);
  }
  int64_t load(const std::string& run) {
    std::vector<float> p(layout.total);
    AdamW a{layout, cfg.train};
    const TrainState s = load_checkpoint(run, layout, p, a);
    EXPECT_EQ(p[0], static_cast<float>(s.step)) << "the tensors of the state's step";
    return s.step;
  }
};

void flip_byte(const std::string& path, std::streamoff at) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(at, std::ios::end);
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x10);
  f.seekp(at, std::ios::end);
  f.write(&c, 1);
}

TEST(Checkpoint, AFlippedByteInAnyTensorFileIsNamed) {
  for (const char* name : {"model.safetensors", "optimizer.safetensors"}) {
    TempDir dir;
    Fixture fx;
    fx.save(dir / "run", 3);
    EXPECT_EQ(read_json(dir / "run/checkpoint/state.json")["format"], 2);
    EXPECT_EQ(fx.load(dir / "run"), 3);
    const std::string file = dir / ("run/checkpoint/" + std::string(name));
    flip_byte(file, -5);  // inside the last tensor's data: safetensors alone cannot tell
    const std::string msg = message_of([&] { fx.load(dir / "run"); });
    EXPECT_NE(msg.find(file), std::string::npos) << msg;
    EXPECT_NE(msg.find("is corrupt"), std::string::npos) << msg;
  }
}

TEST(Checkpoint, TheNewestCompleteCopySurvivesCrashesInTheSwap) {
  TempDir dir;
  Fixture fx;
  const std::string run = dir / "run";
  const fs::path ck = fs::path(run) / "checkpoint", old = fs::path(run) / "checkpoint.old",
                 tmp = fs::path(run) / "checkpoint.tmp";
  fx.save(dir / "a", 4);
  fx.save(dir / "b", 8);
  // Crash 1 between the renames: the previous checkpoint is checkpoint.old, the new one
  // checkpoint.tmp; checkpoint is gone. Resume takes the newer.
  fs::create_directories(run);
  fs::copy(fs::path(dir / "a") / "checkpoint", old);
  fs::copy(fs::path(dir / "b") / "checkpoint", tmp);
  EXPECT_TRUE(has_checkpoint(run));
  EXPECT_EQ(checkpoint_step(run), 8);
  EXPECT_EQ(fx.load(run), 8);
  // The issue's two crashes: only a complete checkpoint.tmp is left.
  fs::remove_all(old);
  EXPECT_EQ(checkpoint_step(run), 8);
  EXPECT_EQ(fx.load(run), 8);
  // The next save first moves it back to checkpoint, then swaps as usual.
  fx.save(run, 12);
  EXPECT_EQ(fx.load(run), 12);
  EXPECT_FALSE(fs::exists(tmp));
  EXPECT_FALSE(fs::exists(old));
  // A torn checkpoint.tmp (no state.json: a crash while writing it) never shadows checkpoint.
  fs::create_directories(tmp);
  { std::ofstream(tmp / "model.safetensors") << "partial"; }
  EXPECT_EQ(fx.load(run), 12);
  fx.save(run, 16);
  EXPECT_EQ(fx.load(run), 16);
  // Only checkpoint.old (a crash after renaming checkpoint away, before the new one was
  // complete): it is loaded.
  fs::rename(ck, old);
  EXPECT_EQ(fx.load(run), 16);
  fs::remove_all(old);
  EXPECT_FALSE(has_checkpoint(run));
  EXPECT_EQ(checkpoint_step(run), -1);
}

TEST(Checkpoint, NegativeCountersAreRefused) {
  TempDir dir;
  Fixture fx;
  fx.save(dir / "run", 2);
  const std::string state = dir / "run/checkpoint/state.json";
  nlohmann::json j = read_json(state);
  j["next_batch"] = -5;
  { std::ofstream(state) << j.dump(); }
  EXPECT_NE(message_of([&] { fx.load(dir / "run"); }).find("negative step, tokens or next_batch"),
            std::string::npos);
}

}  // namespace
}  // namespace moba::train
