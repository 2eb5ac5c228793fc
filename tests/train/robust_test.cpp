// Runs under faults and absurd inputs (issue 15): a full disk names the file and the OS
// error and marks the run failed, absurd sizes are refused before allocating, a folder
// given as --config or a file as --out is a named error, a MoBA checkpoint does not load
// into a full-attention run, and a run moved with its data resumes.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>

#include "core/error.h"
#include "data/prepare.h"
#include "json_lines.h"
#include "run_dir.h"
#include "train/config.h"
#include "train/memory.h"
#include "train/safetensors.h"
#include "train/trainer.h"

namespace moba::train {
namespace {

namespace fs = std::filesystem;
using testing::message_of;
using testing::read_json;
using testing::TempDir;

RunConfig tiny(const std::string& kind = "moba", const std::string& data = "synthetic:assoc_recall",
               const std::string& extra = "") {
  return parse_config("name = \"robust\"\ndata = \"" + data + "\"\n" + R"(
[model]
vocab_size = 32
width = 32
layers = 2
heads = 4
mlp_multiple_of = 16
seq_len = 32
[attention]
kind = ")" + kind + R"("
block_size = 8
top_k = 2
[train]
batch_size = 2
steps = 8
lr = 1e-2
[eval]
windows = 2
batch_size = 2
[checkpoint]
every = 4
)" + extra,
                      "tiny.toml");
}

std::string slurp(const fs::path& p) {
  std::ifstream f(p);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// RLIMIT_FSIZE makes every write past the limit fail with EFBIG, as a full disk fails with
// ENOSPC: the checkpoint's model.safetensors (~100 KB) fails, run.json (~1 KB) still fits.
// In a forked child so that the limit never touches the test runner.
TEST(Robust, DiskFullNamesTheFileAndTheOsErrorAndMarksTheRunFailed) {
  TempDir dir;
  const std::string run = dir / "run", msg_path = dir / "message";
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::signal(SIGXFSZ, SIG_IGN);
    rlimit old{};
    ::getrlimit(RLIMIT_FSIZE, &old);
    const std::string msg = message_of([&] {
      Trainer t(tiny(), {run, "", false, nullptr});
      rlimit r{32 * 1024, old.rlim_max};
      ::setrlimit(RLIMIT_FSIZE, &r);
      t.run();
    });
    ::setrlimit(RLIMIT_FSIZE, &old);
    std::ofstream(msg_path) << msg;
    ::_exit(0);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  const std::string msg = slurp(msg_path);
  EXPECT_NE(msg.find("model.safetensors' failed: File too large"), std::string::npos) << msg;
  EXPECT_EQ(read_json(run + "/run.json")["status"], "failed");
  EXPECT_FALSE(fs::exists(run + "/checkpoint.tmp")) << "a partial checkpoint was left";
  for (const auto& e : fs::recursive_directory_iterator(run))
    EXPECT_NE(e.path().extension(), ".tmp") << "temporary left: " << e.path();
}

// A shape of 2^62 + 1 floats is 4 bytes modulo 2^64: the size check passed and the reader
// tried to allocate 2^62 floats ("internal error: std::bad_alloc").
TEST(Robust, ASafetensorsShapeThatOverflowsIsANamedError) {
  TempDir dir;
  const std::string header =
      R"({"w":{"dtype":"F32","shape":[4611686018427387905],"data_offsets":[0,4]}})";
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  bytes += header + std::string(4, '\0');
  std::ofstream(dir / "m.safetensors", std::ios::binary) << bytes;
  const std::string m = message_of([&] { read_safetensors(dir / "m.safetensors"); });
  EXPECT_NE(m.find("m.safetensors' is corrupt: tensor w has shape [4611686018427387905]"),
            std::string::npos)
      << m;
}

// Issue 15, finding 7: a link planted at RUN/run.json.tmp was followed and its target
// overwritten when the trainer rewrote run.json.
TEST(Robust, ALinkPlantedAtRunJsonTmpIsNotFollowed) {
  TempDir dir;
  const std::string run = dir / "run";
  {
    Trainer t(tiny(), {run, "", false, nullptr});
    t.run(4);
  }
  std::ofstream(dir / "victim") << "precious";
  fs::create_symlink(dir / "victim", run + "/run.json.tmp");
  {
    Trainer t(tiny(), {run, "", true, nullptr});
    t.run();
  }
  EXPECT_EQ(slurp(dir / "victim"), "precious");
  EXPECT_EQ(read_json(run + "/run.json")["status"], "finished");
  EXPECT_FALSE(fs::exists(run + "/run.json.tmp"));
}

TEST(Robust, AbsurdSizesAreRefusedBeforeAllocating) {
  TempDir dir;
  const std::function<void(RunConfig&)> absurd[] = {
      [](RunConfig& c) { c.model.layers = 1000000000; },
      [](RunConfig& c) { c.model.seq_len = 1000000000; },
      [](RunConfig& c) { c.train.batch_size = 100000000; }};
  for (const auto& set : absurd) {
    RunConfig c = tiny("full");
    set(c);
    const std::string m = message_of([&] { Trainer t(c, {dir / "r", "", false, nullptr}); });
    EXPECT_NE(m.find("the configuration needs at least"), std::string::npos) << m;
    EXPECT_NE(m.find("reduce model.layers"), std::string::npos) << m;
    EXPECT_FALSE(fs::exists(dir / "r")) << "the run folder was touched";
  }
  RunConfig c = tiny("full");
  c.train.batch_size = 100000000, c.train.grad_accum = 100000000, c.model.seq_len = 1000000000;
  EXPECT_NE(message_of([&] {
              check_memory(c.model, c.train.batch_size, c.train.grad_accum, "cpu");
            }).find("tokens per step is too large to count"),
            std::string::npos);
  // The estimate of a tiny model is small and positive; it grows with the batch.
  const MemoryEstimate a = estimate_memory(tiny().model, 1, "cpu"),
                       b = estimate_memory(tiny().model, 8, "cpu");
  EXPECT_GT(a.total(), 0);
  EXPECT_LT(a.total(), 100e6);
  EXPECT_GT(b.activations, 7.9 * a.activations);
  EXPECT_EQ(a.weights, b.weights);
}

TEST(Robust, AFolderAsConfigAndAFileAsOutAreNamedErrors) {
  TempDir dir;
  fs::create_directories(dir / "conf.toml");
  EXPECT_NE(message_of([&] { load_config(dir / "conf.toml"); })
                .find("config file must be a regular file, this is a folder"),
            std::string::npos);
  std::ofstream(dir / "afile") << "x";
  EXPECT_NE(message_of([&] { Trainer t(tiny(), {dir / "afile", "", false, nullptr}); })
                .find("exists and is not a folder"),
            std::string::npos);
  EXPECT_NE(message_of([&] { Trainer t(tiny(), {dir / "afile/run", "", false, nullptr}); })
                .find("cannot create the run folder"),
            std::string::npos);
}

TEST(Robust, AMobaCheckpointDoesNotLoadIntoAFullAttentionRun) {
  TempDir dir;
  const std::string run = dir / "run";
  {
    Trainer t(tiny("moba"), {run, "", false, nullptr});
    t.run(4);
  }
  EXPECT_NE(read_json(run + "/checkpoint/state.json")["attention"].get<std::string>().find("moba S=8 K=2"),
            std::string::npos);
  // Someone edits the run's configuration to full attention and resumes.
  const RunConfig full = tiny("full");
  std::ofstream(run + "/config.toml") << run_config_text(full.resolved(), run);
  const std::string m = message_of([&] { Trainer t(full, {run, "", true, nullptr}); });
  EXPECT_NE(m.find("was trained with attention 'moba S=8 K=2"), std::string::npos) << m;
  EXPECT_NE(m.find("the configuration says 'full'"), std::string::npos) << m;
}

// A project folder (data + runs) moved elsewhere, the run resumed from yet another current
// folder: the run's config.toml names its data relative to the run folder.
TEST(Robust, AMovedRunResumesWithItsData) {
  TempDir dir;
  const fs::path cwd = fs::current_path();
  const fs::path a = dir / "a", b = dir / "b";
  std::mt19937_64 g(3);
  for (int d = 0; d < 8; ++d) {
    std::string text(300, 'a');
    for (char& ch : text) ch = static_cast<char>('a' + g() % 26);
    fs::create_directories(a / "docs");
    std::ofstream(a / "docs" / ("d" + std::to_string(d) + ".txt")) << text << "\n";
  }
  fs::current_path(a);
  data::PrepareConfig pc;
  pc.inputs = {"docs"};
  pc.out_dir = "data";
  pc.tokenizer = "byte";
  pc.val_fraction = 0.3;
  pc.threads = 1;
  pc.progress = false;
  data::prepare(pc, nullptr);
  RunConfig cfg = tiny("full", "data", "");
  cfg.model.vocab_size = 256;
  {
    Trainer t(cfg, {"runs/r", "", false, nullptr});
    t.run(4);
  }
  EXPECT_NE(slurp(a / "runs/r/config.toml").find("../../data"), std::string::npos);
  fs::current_path(dir.str());
  fs::rename(a, b);
  std::string m;
  int64_t step = 0;
  m = message_of([&] {
    Trainer t(load_run_config((b / "runs/r").string()), {(b / "runs/r").string(), "", true, nullptr});
    t.run();
    step = t.state().step;
  });
  fs::current_path(cwd);
  EXPECT_EQ(m, "(no error)");
  EXPECT_EQ(step, 8);
  EXPECT_EQ(read_json((b / "runs/r/run.json").string())["status"], "finished");
}

}  // namespace
}  // namespace moba::train
