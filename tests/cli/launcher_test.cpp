// The launcher of `moba train --gpus N` (src/cli/launcher.h) with a stand-in rank
// (launcher_child.cpp): the ranks' environment (torchrun's variables, the id file,
// NCCL_NVLS_ENABLE=0 whatever the caller set), the id passed through the file, and a job
// that stops with the failing or hanging rank named instead of hanging.
#include "cli/launcher.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include "core/error.h"
#include "train/json_lines.h"
#include "train/run_dir.h"

namespace moba::cli {
namespace {

using train::testing::TempDir;
using train::testing::message_of;
using Clock = std::chrono::steady_clock;

std::map<std::string, std::string> read_env(const std::string& path) {
  std::map<std::string, std::string> kv;
  std::ifstream f(path);
  for (std::string line; std::getline(f, line);) {
    const size_t eq = line.find('=');
    if (eq != std::string::npos) kv[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return kv;
}

LaunchOptions child(const TempDir& dir, int ranks, const std::string& mode, int target = -1) {
  LaunchOptions o;
  o.ranks = ranks;
  o.command = {LAUNCHER_CHILD, dir.str(), mode};
  if (target >= 0) o.command.push_back(std::to_string(target));
  o.grace = std::chrono::milliseconds(1500);
  o.kill_grace = std::chrono::milliseconds(1000);
  o.log = nullptr;
  return o;
}

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

TEST(Launcher, RanksGetTheirEnvironmentAndTheId) {
  // The caller's NVLS setting must not reach the ranks.
  ::setenv("NCCL_NVLS_ENABLE", "1", 1);
  for (int n : {1, 3}) {
    SCOPED_TRACE(n);
    TempDir dir;
    launch(child(dir, n, "ok"));
    std::string id, id_file;
    for (int r = 0; r < n; ++r) {
      auto kv = read_env(dir / ("rank" + std::to_string(r) + ".env"));
      EXPECT_EQ(kv["RANK"], std::to_string(r));
      EXPECT_EQ(kv["LOCAL_RANK"], std::to_string(r));
      EXPECT_EQ(kv["WORLD_SIZE"], std::to_string(n));
      EXPECT_EQ(kv["LOCAL_WORLD_SIZE"], std::to_string(n));
      EXPECT_EQ(kv["NCCL_NVLS_ENABLE"], "0");
      ASSERT_NE(kv["MOBA_NCCL_ID_FILE"], "<unset>");
      if (r == 0) {
        id = kv["ID"];
        id_file = kv["MOBA_NCCL_ID_FILE"];
        EXPECT_EQ(id.rfind("id-of-", 0), 0u) << id;
      }
      EXPECT_EQ(kv["ID"], id) << "rank " << r << " read another id";
      EXPECT_EQ(kv["MOBA_NCCL_ID_FILE"], id_file);
    }
    // The id's temporary folder is gone with the job.
    EXPECT_FALSE(std::filesystem::exists(std::filesystem::path(id_file).parent_path()));
  }
  ::unsetenv("NCCL_NVLS_ENABLE");
}

TEST(Launcher, IdFolderGivenIsUsedAndKept) {
  TempDir dir;
  LaunchOptions o = child(dir, 2, "ok");
  o.id_dir = dir / "ids";
  launch(o);
  EXPECT_EQ(read_env(dir / "rank1.env")["MOBA_NCCL_ID_FILE"], dir / "ids/nccl_id");
  EXPECT_TRUE(std::filesystem::exists(dir / "ids/nccl_id"));
}

// `moba sweep --gpus`: the ranks' stdout joins their stderr, the launcher's stdout stays
// clean; by default both are the launcher's own.
TEST(Launcher, RanksStdoutCanGoToStderr) {
  for (bool to_stderr : {false, true}) {
    SCOPED_TRACE(to_stderr);
    TempDir dir;
    LaunchOptions o = child(dir, 2, "speak");
    o.stdout_to_stderr = to_stderr;
    ::testing::internal::CaptureStdout();
    ::testing::internal::CaptureStderr();
    launch(o);
    const std::string out = ::testing::internal::GetCapturedStdout();
    const std::string err = ::testing::internal::GetCapturedStderr();
    for (int r = 0; r < 2; ++r) {
      const std::string said = "rank " + std::to_string(r) + " on stdout\n";
      EXPECT_EQ(out.find(said) != std::string::npos, !to_stderr) << out;
      EXPECT_EQ(err.find(said) != std::string::npos, to_stderr) << err;
      EXPECT_NE(err.find("rank " + std::to_string(r) + " on stderr\n"), std::string::npos) << err;
    }
  }
}

TEST(Launcher, FailingRankIsNamedAndTheOthersStopped) {
  TempDir dir;
  const auto t0 = Clock::now();
  const std::string msg = message_of([&] { launch(child(dir, 4, "fail", 2)); });
  // The others would wait a minute: they were stopped after the grace instead.
  EXPECT_LT(seconds_since(t0), 20.0);
  EXPECT_NE(msg.find("rank 2 of 4 failed (exit code 2)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("stopped rank(s) 0, 1, 3"), std::string::npos) << msg;
}

TEST(Launcher, CrashingRankIsNamedWithItsSignal) {
  TempDir dir;
  const std::string msg = message_of([&] { launch(child(dir, 2, "crash", 0)); });
  EXPECT_NE(msg.find("rank 0 of 2 failed (signal 6"), std::string::npos) << msg;
  EXPECT_NE(msg.find("stopped rank(s) 1"), std::string::npos) << msg;
}

TEST(Launcher, HangingRankIsKilledAfterTheTimeout) {
  TempDir dir;
  const auto t0 = Clock::now();
  const std::string msg = message_of([&] { launch(child(dir, 3, "hang", 1)); });
  const double s = seconds_since(t0);
  EXPECT_GE(s, 1.5);   // the grace after the others' timeouts
  EXPECT_LT(s, 20.0);  // then SIGTERM: not a hang
  EXPECT_NE(msg.find("rank(s) 1 of 3 hung: rank(s) 0, 2 timed out waiting for them"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("stopped rank(s) 1"), std::string::npos) << msg;
}

TEST(Launcher, ProgramThatCannotStartIsAnError) {
  TempDir dir;
  LaunchOptions o = child(dir, 2, "ok");
  o.command[0] = dir / "no-such-program";
  const std::string msg = message_of([&] { launch(o); });
  EXPECT_NE(msg.find("failed (exit code 127)"), std::string::npos) << msg;
  o.ranks = 0;
  EXPECT_NE(message_of([&] { launch(o); }).find("--gpus must be >= 1"), std::string::npos);
}

TEST(Launcher, RankCommandDropsTheGpusOption) {
  EXPECT_EQ(without_option({"moba", "train", "--gpus", "4", "-c", "x.toml"}, "--gpus"),
            (std::vector<std::string>{"moba", "train", "-c", "x.toml"}));
  EXPECT_EQ(without_option({"moba", "train", "--gpus=2", "--gpus-x", "1"}, "--gpus"),
            (std::vector<std::string>{"moba", "train", "--gpus-x", "1"}));
}

TEST(Launcher, RankEnvironmentIsChecked) {
  ::unsetenv(kIdFileEnv);
  EXPECT_FALSE(rank_env().has_value());
  ::setenv(kIdFileEnv, "/tmp/x", 1);
  ::setenv("RANK", "3", 1);
  ::setenv("WORLD_SIZE", "2", 1);
  ::setenv("LOCAL_RANK", "1", 1);
  EXPECT_NE(message_of([] { rank_env(); }).find("RANK=3 is outside WORLD_SIZE=2"),
            std::string::npos);
  ::setenv("RANK", "x1", 1);
  EXPECT_NE(message_of([] { rank_env(); }).find("RANK='x1' is not a non-negative integer"),
            std::string::npos);
  ::setenv("RANK", "1", 1);
  const auto e = rank_env();
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->rank, 1);
  EXPECT_EQ(e->world, 2);
  EXPECT_EQ(e->local_rank, 1);
  for (const char* k : {kIdFileEnv, "RANK", "WORLD_SIZE", "LOCAL_RANK"}) ::unsetenv(k);
}

TEST(Launcher, WaitingForAnIdThatNeverComesTimesOut) {
  TempDir dir;
  const std::string msg = message_of(
      [&] { wait_for_id(dir / "nccl_id", 128, std::chrono::milliseconds(100)); });
  EXPECT_NE(msg.find("rank 0 did not publish NCCL's id"), std::string::npos) << msg;
  publish_id(dir / "nccl_id", std::vector<char>(128, 'x'));
  EXPECT_EQ(wait_for_id(dir / "nccl_id", 128, std::chrono::milliseconds(100)),
            std::vector<char>(128, 'x'));
}

}  // namespace
}  // namespace moba::cli
