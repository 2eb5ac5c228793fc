// Data-parallel training on GPUs through NCCL (label gpu, registered with -DMOBA_GPU_TESTS=ON;
// skips without the devices it needs):
//
// - one GPU: the trainer with a one-rank NCCL communicator runs the whole data-parallel path
//   (its slice is the whole batch, the buckets are all-reduced during the backward, the
//   loss and FLOPs go through the host all-reduce, the checksums are compared) and follows
//   the plain GPU trainer's loss curve (to the fp32 atomics' rounding that separates two
//   GPU runs anyway, trainer_gpu_test.cpp); `moba train --gpus 1` through the launcher;
// - two GPUs or more: two ranks (threads of this process, one GPU each) follow the one-GPU
//   run to bf16 rounding, hold equal parameters, and only rank 0 writes; `moba train
//   --gpus 2` through the launcher does the same from the command line;
// - `moba sweep --gpus N` (N = 1 on one GPU, 2 on two): every run of a micro ladder follows
//   the same sweep on one GPU in-process, and a second invocation skips them all.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "dist/nccl_communicator.h"
#include "train/config.h"
#include "train/json_lines.h"
#include "train/run_dir.h"
#include "train/trainer.h"

namespace moba::train {
namespace {

using namespace std::chrono_literals;
using testing::TempDir;
using testing::read_json;
using testing::read_lines;

int devices() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

constexpr const char* kConfig = R"(
name = "gpu-dp"
[model]
vocab_size = 64
width = 128
layers = 2
heads = 2
kv_heads = 1
head_dim = 64
mlp_multiple_of = 64
seq_len = 256
tied_embeddings = false
[attention]
kind = "moba"
block_size = 64
top_k = 2
full_attention_last_layers = 1
moba_to_full_at = 0.6
[train]
batch_size = 4
grad_accum = 2
steps = 12
lr = 3e-3
warmup_steps = 3
[eval]
every = 5
windows = 4
batch_size = 2
[checkpoint]
every = 4
)";

TrainerOptions opts(const std::string& dir, dist::Communicator* comm) {
  TrainerOptions o;
  o.run_dir = dir;
  o.progress = nullptr;
  o.device = "cuda";
  o.comm = comm;
  o.dist_check_every = 3;
  o.dist_bucket_bytes = 64 << 10;  // several buckets: launched during the backward
  return o;
}

double rel(double a, double b) { return std::fabs(a - b) / std::max(std::fabs(b), 1e-12); }

// Every train and val line of b against a: same steps, losses within tol (relative).
void same_curve(const std::string& a_path, const std::string& b_path, double tol) {
  const auto a = read_lines(a_path), b = read_lines(b_path);
  ASSERT_EQ(a.size(), b.size());
  double worst = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i]["kind"], b[i]["kind"]) << "line " << i;
    ASSERT_EQ(a[i]["step"], b[i]["step"]) << "line " << i;
    EXPECT_EQ(a[i]["tokens"], b[i]["tokens"]) << "line " << i;
    const double e = rel(b[i]["loss"].get<double>(), a[i]["loss"].get<double>());
    worst = std::max(worst, e);
    EXPECT_LT(e, tol) << "line " << i << " (" << a[i]["kind"] << " step " << a[i]["step"]
                      << "): " << a[i]["loss"] << " vs " << b[i]["loss"];
    if (a[i]["kind"] == "train") {
      EXPECT_LT(rel(b[i]["flops_exec"].get<double>(), a[i]["flops_exec"].get<double>()), 1e-9);
    }
  }
  std::printf("    worst relative loss difference %.3e over %zu lines\n", worst, a.size());
}

TEST(TrainerNccl, OneRankFollowsThePlainTrainer) {
  if (devices() < 1) GTEST_SKIP() << "no CUDA device";
  TempDir dir;
  const RunConfig cfg = parse_config(kConfig, "gpu-dp.toml");
  Trainer plain(cfg, opts(dir / "plain", nullptr));
  plain.run();
  dist::NcclCommunicator comm(dist::nccl_unique_id(), 0, 1, 0, 120000ms);
  Trainer dp(cfg, opts(dir / "dp", &comm));
  EXPECT_EQ(dp.world(), 1);
  dp.run();
  // Two GPU runs differ by the order of fp32 atomic additions only (trainer_gpu_test.cpp's
  // resume bound); a bucket reduced too early (before its layer's backward) or twice, a
  // wrong loss scale, would move the curve by far more.
  same_curve(dir / "plain/metrics.jsonl", dir / "dp/metrics.jsonl", 1e-3);
  EXPECT_EQ(read_json(dir / "dp/run.json")["status"], "finished");
}

// `moba train --gpus N` in a child process; returns its exit status.
int moba_train_gpus(int n, const std::string& config, const std::string& out) {
  const std::string cmd = std::string(MOBA_BIN) + " train --gpus " + std::to_string(n) +
                          " --dist-check-every 2 --dist-timeout 120 --config " + config +
                          " --out " + out;
  return std::system(cmd.c_str());
}

TEST(TrainerNccl, LauncherRunsOneRank) {
  if (devices() < 1) GTEST_SKIP() << "no CUDA device";
  TempDir dir;
  const std::string config = dir / "gpu-dp.toml";
  std::ofstream(config) << kConfig;
  ASSERT_EQ(moba_train_gpus(1, config, dir / "run"), 0);
  EXPECT_EQ(read_json(dir / "run/run.json")["status"], "finished");
  EXPECT_EQ(read_json(dir / "run/checkpoint/state.json")["step"], 12);
}

TEST(TrainerNccl, TwoRanksFollowOneGpu) {
  if (devices() < 2) GTEST_SKIP() << "needs 2 CUDA devices, this machine has " << devices();
  TempDir dir;
  const RunConfig cfg = parse_config(kConfig, "gpu-dp.toml");
  {
    Trainer one(cfg, opts(dir / "one", nullptr));
    one.run();
  }
  const dist::NcclId id = dist::nccl_unique_id();
  std::vector<std::vector<float>> params(2);
  std::vector<std::string> errors(2);
  std::vector<std::thread> ranks;
  for (int r = 0; r < 2; ++r)
    ranks.emplace_back([&, r] {
      try {
        dist::NcclCommunicator comm(id, r, 2, r, 120000ms);  // selects GPU r for this thread
        Trainer t(cfg, opts(dir / "two", &comm));
        t.run();
        auto p = t.params();
        params[static_cast<size_t>(r)].assign(p.begin(), p.end());
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(r)] = e.what();
      }
    });
  for (auto& t : ranks) t.join();
  ASSERT_EQ(errors[0], "");
  ASSERT_EQ(errors[1], "");
  EXPECT_EQ(params[0], params[1]) << "the ranks took different steps";
  // Another split of the batch over the GPUs: bf16 rounding apart, as CPU against GPU.
  same_curve(dir / "one/metrics.jsonl", dir / "two/metrics.jsonl", 1e-2);
  // The command line: the same run through the launcher's processes.
  const std::string config = dir / "gpu-dp.toml";
  std::ofstream(config) << kConfig;
  ASSERT_EQ(moba_train_gpus(2, config, dir / "cli"), 0);
  same_curve(dir / "two/metrics.jsonl", dir / "cli/metrics.jsonl", 1e-2);
  EXPECT_EQ(read_json(dir / "cli/run.json")["status"], "finished");
}

TEST(TrainerNccl, ResumeOnAnotherGpuCount) {
  if (devices() < 2) GTEST_SKIP() << "needs 2 CUDA devices, this machine has " << devices();
  TempDir dir;
  const RunConfig cfg = parse_config(kConfig, "gpu-dp.toml");
  const std::string config = dir / "gpu-dp.toml";
  std::ofstream(config) << kConfig;
  ASSERT_EQ(moba_train_gpus(2, config, dir / "whole"), 0);
  {  // one GPU, interrupted after step 6: its checkpoint holds step 4
    Trainer first(cfg, opts(dir / "split", nullptr));
    first.run(6);
  }
  EXPECT_EQ(read_json(dir / "split/checkpoint/state.json")["step"], 4);
  // Resumed on two GPUs: the same global batches in the same order, so the same curve as
  // the two-GPU run to bf16 rounding.
  ASSERT_EQ(std::system((std::string(MOBA_BIN) + " train --gpus 2 --resume --out " +
                         dir / "split").c_str()),
            0);
  same_curve(dir / "whole/metrics.jsonl", dir / "split/metrics.jsonl", 1e-2);
}

// A micro ladder within the GPU kernels' limits: 2 sizes x {full, MoBA}, 8 and 12 steps.
constexpr const char* kSweep = R"(
name = "dp-sweep"
attention = ["full", "moba"]
[ladder]
layers = [1, 2]
head_dim = 64
tokens = [8192, 12288]
eval_points = 2
[base]
data = "synthetic:assoc_recall"
[base.model]
vocab_size = 64
seq_len = 256
[base.attention]
block_size = 64
top_k = 2
[base.train]
batch_size = 4
[base.eval]
windows = 4
batch_size = 2
)";

// `moba sweep --gpus N` against `moba sweep --device cuda` (one GPU, in-process), run by run.
void sweep_follows_one_gpu(int gpus, double tol) {
  TempDir dir;
  const std::string preset = dir / "dp-sweep.toml";
  std::ofstream(preset) << kSweep;
  const std::string moba = std::string(MOBA_BIN) + " sweep --config " + preset;
  ASSERT_EQ(std::system((moba + " --device cuda -o " + dir / "one").c_str()), 0);
  const std::string on_gpus = moba + " --gpus " + std::to_string(gpus) +
                              " --dist-check-every 2 --dist-timeout 120 -o " + dir / "dp";
  ASSERT_EQ(std::system(on_gpus.c_str()), 0);
  const std::vector<std::string> runs = {"dp-sweep-L1-full", "dp-sweep-L1-moba",
                                         "dp-sweep-L2-full", "dp-sweep-L2-moba"};
  for (const std::string& r : runs) {
    SCOPED_TRACE(r);
    EXPECT_EQ(read_json(dir / ("dp/" + r + "/run.json"))["status"], "finished");
    same_curve(dir / ("one/" + r + "/metrics.jsonl"), dir / ("dp/" + r + "/metrics.jsonl"), tol);
  }
  EXPECT_EQ(read_json(dir / "dp/plan.json")["gpus"], gpus);
  // Again: every run is skipped, nothing is rewritten.
  std::ifstream before_file(dir / "dp/dp-sweep-L2-moba/metrics.jsonl");
  const std::string before{std::istreambuf_iterator<char>(before_file), {}};
  ASSERT_EQ(std::system(on_gpus.c_str()), 0);
  std::ifstream after_file(dir / "dp/dp-sweep-L2-moba/metrics.jsonl");
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(after_file), {}), before);
}

TEST(TrainerNccl, SweepOnOneGpuThroughTheLauncher) {
  if (devices() < 1) GTEST_SKIP() << "no CUDA device";
  // One rank: the plain trainer's curve, as above, within the GPU's own run-to-run spread (the
  // backward's atomic dK/dV sums are not bit-reproducible): on the H200 the last validation of
  // the L2 MoBA run differed by 2.1e-3 relative (2026-12-03), identical configurations rerun
  // 0.003-0.012 nats apart in the h200 ladder.
  sweep_follows_one_gpu(1, 1e-2);
}

TEST(TrainerNccl, SweepOnTwoGpus) {
  if (devices() < 2) GTEST_SKIP() << "needs 2 CUDA devices, this machine has " << devices();
  sweep_follows_one_gpu(2, 1e-2);  // another split of each batch: bf16 rounding apart
}

}  // namespace
}  // namespace moba::train
