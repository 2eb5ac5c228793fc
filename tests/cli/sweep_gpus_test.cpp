// `moba sweep --gpus N` on the CPU: the sweep (scaling/sweep.h) hands each run to the
// launcher (cli/sweep_ranks.h), which starts N stand-in ranks (sweep_rank_child.cpp) that
// write the run folder as the trainer's rank 0 would. Checked: N ranks per run with
// torchrun's variables and NCCL_NVLS_ENABLE=0, one NCCL id per run, the runs in the plan's
// order; a finished sweep skipped, an interrupted run resumed on the ranks; a failing rank
// fails its run, named, and the sweep goes on; what is refused before anything starts; the
// planner's times for N GPUs. The GPUs themselves: tests/dist/trainer_nccl_test.cpp.
#include "cli/sweep_ranks.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "core/build_info.h"
#include "core/error.h"
#include "scaling/sweep.h"
#include "train/config.h"
#include "train/data_parallel.h"
#include "train/json_lines.h"
#include "train/run_dir.h"

namespace moba::cli {
namespace {

namespace fs = std::filesystem;
using scaling::SweepConfig;
using scaling::SweepOptions;
using scaling::SweepSummary;
using train::testing::message_of;
using train::testing::TempDir;

// 2 sizes x {full, MoBA} within the GPU kernels' limits (head dim 64, S = 64), small enough
// to train on the CPU for the resume case: 8 and 10 steps of 256 tokens.
SweepConfig micro() {
  return scaling::parse_sweep_config(R"(
name = "micro"
attention = ["full", "moba"]
[ladder]
layers = [1, 2]
head_dim = 64
tokens = [2048, 2560]
eval_points = 2
[base]
data = "synthetic:assoc_recall"
[base.model]
vocab_size = 256
seq_len = 128
[base.attention]
block_size = 64
top_k = 2
[base.train]
batch_size = 2
[base.eval]
windows = 2
batch_size = 2
)",
                                     "micro.toml");
}

const std::vector<std::string> kRuns = {"micro-L1-full", "micro-L1-moba", "micro-L2-full",
                                        "micro-L2-moba"};

// The sweep on `gpus` stand-in ranks; the machine's checks skipped (no GPU here).
SweepOptions on_ranks(const std::string& runs, int gpus, std::FILE* out = nullptr) {
  SweepOptions o;
  o.runs_dir = runs;
  o.out = out;
  o.device = "cuda";
  o.gpus = gpus;
  o.check_machine = false;
  SweepRanksOptions r;
  r.gpus = gpus;
  r.program = SWEEP_RANK_CHILD;
  r.grace = std::chrono::milliseconds(300);
  r.kill_grace = std::chrono::milliseconds(500);
  r.log = nullptr;
  o.launch_ranks = sweep_rank_launcher(r);
  return o;
}

// What a stand-in rank logged: its key=value pairs, "args" the rest of the line.
using Line = std::map<std::string, std::string>;
std::vector<Line> read_log(const std::string& path) {
  std::vector<Line> lines;
  std::ifstream f(path);
  for (std::string text; std::getline(f, text);) {
    Line kv;
    const size_t args = text.find(" args=");
    kv["args"] = args == std::string::npos ? "" : text.substr(args + 6);
    std::string head = text.substr(0, args);
    for (size_t i = 0; i < head.size();) {
      size_t end = head.find(' ', i);
      if (end == std::string::npos) end = head.size();
      const std::string item = head.substr(i, end - i);
      const size_t eq = item.find('=');
      if (eq != std::string::npos) kv[item.substr(0, eq)] = item.substr(eq + 1);
      i = end + 1;
    }
    lines.push_back(kv);
  }
  return lines;
}

std::string read_text(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

std::string run_status(const fs::path& run) {
  return nlohmann::json::parse(read_text(run / "run.json")).value("status", "");
}

// A FILE* whose text the test reads back (the sweep's progress).
class Captured {
 public:
  Captured() : f_(std::tmpfile()) {}
  ~Captured() { std::fclose(f_); }
  std::FILE* file() const { return f_; }
  std::string text() const {
    std::fflush(f_);
    std::rewind(f_);
    std::string s;
    char buf[4096];
    for (size_t n; (n = std::fread(buf, 1, sizeof buf, f_)) > 0;) s.append(buf, n);
    return s;
  }

 private:
  std::FILE* f_;
};

class SweepGpus : public ::testing::Test {
 protected:
  void SetUp() override {
    ::setenv("SWEEP_RANK_LOG", (dir_ / "ranks.log").c_str(), 1);
    ::unsetenv("SWEEP_RANK_FAIL");
    ::setenv("NCCL_NVLS_ENABLE", "1", 1);  // the caller's: must not reach the ranks
  }
  void TearDown() override {
    for (const char* k : {"SWEEP_RANK_LOG", "SWEEP_RANK_FAIL", "NCCL_NVLS_ENABLE"}) ::unsetenv(k);
  }
  std::vector<Line> log() const { return read_log(dir_ / "ranks.log"); }
  TempDir dir_;
};

// The log's lines of each run, checked as one run of `gpus` ranks; returns the runs in the
// order they ran.
std::vector<std::string> check_runs(const std::vector<Line>& lines, int gpus,
                                    const std::string& runs_dir,
                                    const std::vector<std::string>& resumed = {}) {
  std::vector<std::string> order;
  EXPECT_EQ(lines.size() % gpus, 0u);
  std::map<std::string, std::string> ids;
  for (size_t i = 0; i + gpus <= lines.size(); i += gpus) {
    const std::string run = lines[i].at("run");
    SCOPED_TRACE(run);
    order.push_back(run);
    std::vector<int> seen(gpus, 0);
    for (int k = 0; k < gpus; ++k) {
      const Line& l = lines[i + k];
      EXPECT_EQ(l.at("run"), run) << "another run's rank started before this run ended";
      const int rank = std::stoi(l.at("rank"));
      if (rank >= 0 && rank < gpus) ++seen[rank];
      else ADD_FAILURE() << "rank " << rank << " outside " << gpus;
      EXPECT_EQ(l.at("world"), std::to_string(gpus));
      EXPECT_EQ(l.at("local_rank"), l.at("rank"));
      EXPECT_EQ(l.at("local_world"), std::to_string(gpus));
      EXPECT_EQ(l.at("nvls"), "0");
      EXPECT_EQ(l.at("id"), lines[i].at("id")) << "rank " << rank << " read another id";
      EXPECT_EQ(l.at("id_file"), lines[i].at("id_file"));
      const bool resume = std::find(resumed.begin(), resumed.end(), run) != resumed.end();
      const std::string want = "train --config " +
                               (fs::path(l.at("id_file")).parent_path() / (run + ".toml")).string() +
                               " --out " + (fs::path(runs_dir) / run).string() +
                               " --device cuda --dist-timeout 600 --dist-check-every 100" +
                               (resume ? " --resume" : "");
      EXPECT_EQ(l.at("args"), want);
    }
    for (int r = 0; r < gpus; ++r) EXPECT_EQ(seen[r], 1) << "rank " << r;
    EXPECT_TRUE(ids.emplace(lines[i].at("id"), run).second) << "a run reused an NCCL id";
    // The run's temporary folder (its configuration, the id file) is gone.
    EXPECT_FALSE(fs::exists(fs::path(lines[i].at("id_file")).parent_path()));
  }
  return order;
}

TEST_F(SweepGpus, EveryRunOnNRanksInOrderThenSkipped) {
  const SweepConfig s = micro();
  const scaling::Plan plan = scaling::make_plan(s);
  for (int gpus : {1, 2}) {
    SCOPED_TRACE(gpus);
    const std::string runs = dir_ / ("runs" + std::to_string(gpus));
    fs::remove(dir_ / "ranks.log");
    Captured out;
    const SweepSummary a = scaling::run_sweep(s, on_ranks(runs, gpus, out.file()));
    EXPECT_EQ(a.trained, 4);
    EXPECT_EQ(a.failed, 0);
    EXPECT_EQ(check_runs(log(), gpus, runs), kRuns);
    for (const scaling::PlannedRun& r : plan.runs) {
      const fs::path run = fs::path(runs) / r.config.name;
      EXPECT_EQ(run_status(run), "finished") << run;
      // Rank 0 got the planned configuration, key for key.
      EXPECT_TRUE(train::run_config_diff(train::load_run_config(run.string()), r.config).empty())
          << run;
    }
    const nlohmann::json p = nlohmann::json::parse(read_text(fs::path(runs) / "plan.json"));
    EXPECT_EQ(p["device"], "cuda");
    EXPECT_EQ(p["gpus"], gpus);
    const std::string text = out.text();
    const std::string where = std::to_string(gpus) + " GPUs";
    EXPECT_NE(text.find("=== sweep micro on " + where + ": run 1/4 micro-L1-full"),
              std::string::npos)
        << text;
    EXPECT_NE(text.find("sweep micro on " + where +
                        ": 4 trained, 0 resumed, 0 skipped (finished before), 0 failed"),
              std::string::npos)
        << text;

    // Again: every run is finished, no rank starts.
    const SweepSummary again = scaling::run_sweep(s, on_ranks(runs, gpus));
    EXPECT_EQ(again.skipped, 4);
    EXPECT_EQ(again.trained + again.resumed + again.failed, 0);
    EXPECT_EQ(log().size(), 4u * gpus);
  }
}

TEST_F(SweepGpus, FailingRankFailsItsRunAndTheSweepGoesOn) {
  const SweepConfig s = micro();
  const std::string runs = dir_ / "runs";
  ::setenv("SWEEP_RANK_FAIL", "micro-L1-moba:1", 1);
  Captured out;
  const std::string msg = message_of([&] { scaling::run_sweep(s, on_ranks(runs, 2, out.file())); });
  EXPECT_NE(msg.find("1 run(s) of sweep micro failed:\n  micro-L1-moba: launcher: rank 1 of 2 "
                     "failed (exit code 2); stopped rank(s) 0"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("rerun the same command to retry them"), std::string::npos) << msg;
  // The runs after it ran, each on its two ranks.
  EXPECT_EQ(check_runs(log(), 2, runs), kRuns);
  const std::string text = out.text();
  EXPECT_NE(text.find("run micro-L1-moba failed: launcher: rank 1 of 2 failed (exit code 2)"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("(the sweep goes on)"), std::string::npos) << text;
  EXPECT_NE(text.find("3 trained, 0 resumed, 0 skipped (finished before), 1 failed"),
            std::string::npos)
      << text;
  EXPECT_EQ(run_status(fs::path(runs) / "micro-L1-moba"), "running");
  EXPECT_EQ(run_status(fs::path(runs) / "micro-L2-moba"), "finished");

  // The same command again retries it: started without a checkpoint, so trained anew.
  ::unsetenv("SWEEP_RANK_FAIL");
  fs::remove(dir_ / "ranks.log");
  const SweepSummary retry = scaling::run_sweep(s, on_ranks(runs, 2));
  EXPECT_EQ(retry.trained, 1);
  EXPECT_EQ(retry.skipped, 3);
  EXPECT_EQ(check_runs(log(), 2, runs), std::vector<std::string>{"micro-L1-moba"});
  EXPECT_EQ(run_status(fs::path(runs) / "micro-L1-moba"), "finished");
}

TEST_F(SweepGpus, InterruptedRunResumesOnTheRanks) {
  const SweepConfig s = micro();
  const scaling::Plan plan = scaling::make_plan(s);
  const std::string runs = dir_ / "runs";
  // The first run trained in-process on the CPU up to a checkpoint, then "killed".
  SweepOptions cut;
  cut.runs_dir = runs;
  cut.out = nullptr;
  const int64_t every = plan.runs[0].config.checkpoint_every;
  ASSERT_GT(every, 0);
  ASSERT_LT(every, plan.runs[0].config.train.steps);
  cut.interrupt_after_steps = every;
  ASSERT_TRUE(scaling::run_sweep(s, cut).interrupted);

  const SweepSummary rest = scaling::run_sweep(s, on_ranks(runs, 2));
  EXPECT_EQ(rest.resumed, 1);
  EXPECT_EQ(rest.trained, 3);
  EXPECT_EQ(check_runs(log(), 2, runs, {"micro-L1-full"}), kRuns);
}

TEST_F(SweepGpus, RefusedBeforeAnythingStarts) {
  const SweepConfig s = micro();
  const std::string runs = dir_ / "runs";
  auto nothing_started = [&] {
    EXPECT_FALSE(fs::exists(dir_ / "ranks.log"));
    EXPECT_FALSE(fs::exists(fs::path(runs) / "micro-L1-full"));
  };
  // A batch of 2 rows over 3 GPUs, in every run (the first named).
  EXPECT_NE(message_of([&] { scaling::run_sweep(s, on_ranks(runs, 3)); })
                .find("--gpus 3: run micro-L1-full: train.batch_size = 2 rows cannot be split "
                      "evenly over 3 GPUs"),
            std::string::npos);
  nothing_started();
  SweepOptions cpu = on_ranks(runs, 2);
  cpu.device = "cpu";
  EXPECT_NE(message_of([&] { scaling::run_sweep(s, cpu); })
                .find("--gpus 2 trains on GPUs: --device cpu contradicts it"),
            std::string::npos);
  nothing_started();
  // This machine: no NCCL in a CPU build; no GPU here.
  std::string why;
  if (train::built_with_nccl() && cuda_devices(&why).size() >= 2)
    GTEST_SKIP() << "two CUDA devices are present: the refusal cannot be tested here";
  SweepOptions machine = on_ranks(runs, 2);
  machine.check_machine = true;
  const std::string msg = message_of([&] { scaling::run_sweep(s, machine); });
  if (!train::built_with_nccl())
    EXPECT_NE(msg.find("--gpus: this build of moba has no NCCL"), std::string::npos) << msg;
  else if (cuda_devices(&why).empty())
    EXPECT_NE(msg.find("--device cuda: no CUDA device"), std::string::npos) << msg;
  else
    EXPECT_NE(msg.find("--gpus 2: this machine shows 1 CUDA device(s)"), std::string::npos) << msg;
  nothing_started();
}

// --plan-only --gpus N: each run's estimate / N with the assumption said, the data reads as
// on one GPU; a batch that does not split is listed among the refusals.
TEST_F(SweepGpus, PlanForNGpus) {
  SweepConfig s = micro();
  s.estimate.flops_per_s = 1e9;
  s.estimate.seconds_per_token = 1e-6;
  const scaling::Plan one = scaling::make_plan(s);
  scaling::Plan two = scaling::make_plan(s);
  scaling::plan_on_gpus(two, 2);
  ASSERT_EQ(two.runs.size(), one.runs.size());
  for (size_t i = 0; i < one.runs.size(); ++i) {
    EXPECT_GT(one.runs[i].seconds, 0);
    EXPECT_EQ(two.runs[i].seconds, one.runs[i].seconds / 2);
    EXPECT_GT(one.runs[i].seconds_parts.total(), 0);  // the parts (plan.json) halve with it
    EXPECT_EQ(two.runs[i].seconds_parts.per_token, one.runs[i].seconds_parts.per_token / 2);
    EXPECT_EQ(two.runs[i].seconds_parts.matmul, one.runs[i].seconds_parts.matmul / 2);
    EXPECT_EQ(two.runs[i].seconds_parts.full_attention, one.runs[i].seconds_parts.full_attention / 2);
    EXPECT_EQ(two.runs[i].seconds_parts.moba_attention, one.runs[i].seconds_parts.moba_attention / 2);
    EXPECT_EQ(two.runs[i].data_reads, one.runs[i].data_reads);
    EXPECT_EQ(two.runs[i].tokens, one.runs[i].tokens);
    EXPECT_EQ(two.runs[i].config.train.steps, one.runs[i].config.train.steps);
  }
  EXPECT_EQ(two.total_seconds(), one.total_seconds() / 2);

  for (int gpus : {2, 3}) {
    Captured out;
    SweepOptions o;
    o.plan_only = true;
    o.device = "cuda";
    o.gpus = gpus;
    o.out = out.file();
    scaling::run_sweep(s, o);  // plans without a launcher, NCCL or GPU
    const std::string text = out.text();
    const std::string n = std::to_string(gpus);
    EXPECT_NE(text.find("on " + n + " GPUs: each run's time is that estimate / " + n +
                        ", assuming linear scaling"),
              std::string::npos)
        << text;
    EXPECT_NE(text.find("data parallel over " + n + " GPUs per run: tokens, steps and data "
                        "reads as on one"),
              std::string::npos)
        << text;
    EXPECT_NE(text.find("device: " + n + " GPUs"), std::string::npos) << text;
    EXPECT_EQ(text.find("refused as it stands: --gpus") != std::string::npos, gpus == 3) << text;
  }
}

TEST(SweepRanks, RankCommand) {
  SweepRanksOptions o;
  o.program = "/bin/moba";
  o.dist_timeout_s = 90.5;
  o.dist_check_every = 7;
  train::RunConfig cfg;
  EXPECT_EQ(sweep_rank_command(o, "/tmp/x/r.toml", {&cfg, "runs/r", true, true}),
            (std::vector<std::string>{"/bin/moba", "train", "--config", "/tmp/x/r.toml", "--out",
                                      "runs/r", "--device", "cuda", "--dist-timeout", "90.5",
                                      "--dist-check-every", "7", "--resume", "--verbose"}));
  o.gpus = 0;
  EXPECT_NE(message_of([&] { sweep_rank_launcher(o); }).find("--gpus must be >= 1"),
            std::string::npos);
}

}  // namespace
}  // namespace moba::cli
