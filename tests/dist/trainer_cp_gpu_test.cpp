// Context-parallel training on the GPU (docs/distributed.md, "In the trainer" and "The GPU
// path"): the Trainer with --device cuda and a context-parallel group, every rank's ModelCuda
// on its shard of each row, against the plain GPU trainer on the same configuration.
//
//  - R = 2 and 4 ranks on this one GPU (the fake group's threads, each through a
//    HostStagedCommunicator), each its own Trainer: rank 0's metrics.jsonl (train and
//    validation losses, tokens, FLOPs) against the plain GPU trainer's, line by line, within
//    2e-2 relative on the losses (bf16: the rows go one at a time through shards, where the
//    plain trainer runs the micro-batch's rows together, so matmuls and sums round
//    differently; measured and printed) and 1e-9 on the executed FLOPs; the ranks' parameter
//    checksums agree (the trainer checks them every 2 steps and at the end: a difference
//    would be an error);
//  - `moba train --context-parallel 1 --device cuda`: the command's GPU path (one thread on
//    GPU 0 over a one-rank NcclCommunicator), the same curve within the same bound; with R
//    GPUs here, --context-parallel R the same way (skipped on one GPU).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "dist/fake_communicator.h"
#include "dist/host_staged_communicator.h"
#include "train/config.h"
#include "train/json_lines.h"
#include "train/run_dir.h"
#include "train/trainer.h"

namespace moba::train {
namespace {

using testing::TempDir;
using testing::read_lines;

int devices() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

// Every layer MoBA (the GPU model's context parallel has no ring attention), blocks of 64,
// sequences of 512: 4 ranks hold 2 blocks each.
constexpr const char* kConfig = R"(
name = "gpu-cp"
data = "synthetic:assoc_recall"
[model]
vocab_size = 64
width = 256
layers = 2
heads = 4
kv_heads = 2
head_dim = 64
mlp_multiple_of = 64
seq_len = 512
[attention]
kind = "moba"
block_size = 64
top_k = 3
[train]
batch_size = 4
grad_accum = 2
steps = 10
lr = 3e-3
warmup_steps = 3
[eval]
every = 5
windows = 4
batch_size = 2
[checkpoint]
every = 5
)";

TrainerOptions opts(const std::string& dir) {
  TrainerOptions o;
  o.run_dir = dir;
  o.progress = nullptr;
  o.device = "cuda";
  o.dist_check_every = 2;
  return o;
}

double rel(double a, double b) { return std::fabs(a - b) / std::max(std::fabs(b), 1e-12); }

// Line by line: the same kinds, steps and tokens; losses within tol, FLOPs within 1e-9.
void same_curve(const std::string& a_path, const std::string& b_path, double tol,
                const char* what) {
  const auto a = read_lines(a_path), b = read_lines(b_path);
  ASSERT_EQ(a.size(), b.size()) << what;
  double worst = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i]["kind"], b[i]["kind"]) << what << ", line " << i;
    ASSERT_EQ(a[i]["step"], b[i]["step"]) << what << ", line " << i;
    EXPECT_EQ(a[i]["tokens"], b[i]["tokens"]) << what << ", line " << i;
    const double e = rel(b[i]["loss"].get<double>(), a[i]["loss"].get<double>());
    worst = std::max(worst, e);
    EXPECT_LT(e, tol) << what << ", line " << i << " (" << a[i]["kind"] << " step "
                      << a[i]["step"] << "): " << a[i]["loss"] << " vs " << b[i]["loss"];
    if (a[i]["kind"] == "train")
      EXPECT_LT(rel(b[i]["flops_exec"].get<double>(), a[i]["flops_exec"].get<double>()), 1e-9)
          << what << ", line " << i;
  }
  std::printf("    %s: worst relative loss difference %.3e over %zu lines\n", what, worst,
              a.size());
}

class TrainerCpGpu : public ::testing::TestWithParam<int> {};

TEST_P(TrainerCpGpu, HostStagedRanksFollowThePlainGpuTrainer) {
  if (devices() < 1) GTEST_SKIP() << "no CUDA device";
  const int R = GetParam();
  TempDir dir;
  const RunConfig cfg = parse_config(kConfig, "gpu-cp.toml");
  {
    Trainer plain(cfg, opts(dir / "plain"));
    plain.run();
  }
  dist::FakeGroup group(R, std::chrono::milliseconds(120000));
  group.run([&](dist::Communicator& host) {
    dist::HostStagedCommunicator comm(host);
    TrainerOptions o = opts(dir / "cp");
    o.cp_comm = &comm;
    Trainer t(cfg, o);
    t.run();
  });
  same_curve(dir / "plain/metrics.jsonl", dir / "cp/metrics.jsonl", 2e-2,
             (std::to_string(R) + " host-staged ranks").c_str());
}
INSTANTIATE_TEST_SUITE_P(Ranks, TrainerCpGpu, ::testing::Values(2, 4),
                         [](const ::testing::TestParamInfo<int>& i) {
                           return "R" + std::to_string(i.param);
                         });

// The command: --context-parallel R --device cuda, R = 1 (one GPU) and, where there are
// enough GPUs, 2.
TEST(TrainerCpGpuCli, ContextParallelOverNcclFollowsThePlainRun) {
  if (devices() < 1) GTEST_SKIP() << "no CUDA device";
  TempDir dir;
  const std::string config = dir / "gpu-cp.toml";
  std::ofstream(config) << kConfig;
  const std::string moba = MOBA_BIN;
  ASSERT_EQ(std::system((moba + " train --device cuda --config " + config + " --out " +
                         (dir / "plain") + " > " + (dir / "plain.log") + " 2>&1")
                            .c_str()),
            0);
  for (int R : {1, 2}) {
    if (R > devices()) {
      std::printf("    --context-parallel %d: skipped, %d GPU(s) here\n", R, devices());
      continue;
    }
    const std::string out = dir / ("cp" + std::to_string(R));
    const int rc = std::system((moba + " train --device cuda --context-parallel " +
                                std::to_string(R) + " --config " + config + " --out " + out +
                                " > " + out + ".log 2>&1")
                                   .c_str());
    std::ifstream log(out + ".log");
    const std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
    ASSERT_EQ(rc, 0) << text;
    EXPECT_NE(text.find("context parallel: every sequence over " + std::to_string(R) + " ranks"),
              std::string::npos)
        << text;
    same_curve(dir / "plain/metrics.jsonl", out + "/metrics.jsonl", 2e-2,
               ("moba train --context-parallel " + std::to_string(R)).c_str());
  }
}

}  // namespace
}  // namespace moba::train
