// Data-parallel training on the CPU (issue 14, docs/distributed.md): the trainer's ranks as
// threads of a dist::FakeGroup (N = 2 and 4), against one process that computes the same
// thing in the same order: each rank's rows of every global micro-batch, their gradients
// summed in rank order and divided by N, then the same clip and AdamW step. Equal bit for
// bit, float64 (the glue over Model<double>) and float32 (the Trainer itself); against one
// backward over the whole batch only to rounding (the partial sums are grouped otherwise:
// tests/dist/data_parallel_test.cpp).
//
// Also: only rank 0 writes the run folder; a rank whose parameters were perturbed is caught
// by the checksum comparison, naming the step and the rank; a run resumed on another number
// of ranks reads the same global batches in the same order (bit for bit against the fixed-
// order process that switches its slice count at the same step).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "dist/fake_communicator.h"
#include "json_lines.h"
#include "model/model.h"
#include "run_dir.h"
#include "train/adamw.h"
#include "train/batch_source.h"
#include "train/config.h"
#include "train/data_parallel.h"
#include "train/schedule.h"
#include "train/trainer.h"

namespace moba::train {
namespace {

using testing::TempDir;
using testing::message_of;
using testing::read_lines;

// ---------------------------------------------------------------------------------------
// The glue: slices and weights.

model::Batch packed_batch(int64_t B, int64_t T, int64_t V, uint64_t seed) {
  model::Batch b;
  b.B = B;
  b.T = T;
  std::mt19937_64 gen(seed);
  for (int64_t i = 0; i < B * (T + 1); ++i)
    b.tokens.push_back(static_cast<int32_t>(gen() % static_cast<uint64_t>(V)));
  // Documents of varying lengths inside each row; a target across a boundary does not count.
  b.loss_mask.assign(static_cast<size_t>(B * T), 1);
  for (int64_t r = 0; r < B; ++r) {
    int64_t at = r * T;
    b.cu_seqlens.push_back(at);
    const int64_t cut = 1 + (r * 5 + 3) % (T - 1);  // one boundary inside the row
    b.cu_seqlens.push_back(at + cut);
    b.loss_mask[static_cast<size_t>(at + cut - 1)] = 0;
    if (r % 3 == 0) b.loss_mask[static_cast<size_t>(at + T - 1)] = 0;
  }
  b.cu_seqlens.push_back(B * T);
  b.validate(V);
  return b;
}

TEST(DataParallelGlue, RankSliceKeepsRowsBoundariesAndMask) {
  const model::Batch all = packed_batch(8, 6, 11, 3);
  for (int N : {1, 2, 4, 8}) {
    SCOPED_TRACE(N);
    std::vector<int32_t> tokens;
    std::vector<uint8_t> mask;
    double weights = 0.0;
    for (int r = 0; r < N; ++r) {
      const model::Batch s = rank_slice(all, r, N);
      s.validate(11);  // boundaries start at 0, hold every row start, end at B T
      EXPECT_EQ(s.B, 8 / N);
      tokens.insert(tokens.end(), s.tokens.begin(), s.tokens.end());
      mask.insert(mask.end(), s.loss_mask.begin(), s.loss_mask.end());
      // Each slice's boundaries are the global ones of its rows, shifted.
      for (int64_t x : s.cu_seqlens)
        EXPECT_NE(std::find(all.cu_seqlens.begin(), all.cu_seqlens.end(), x + r * s.B * s.T),
                  all.cu_seqlens.end());
      const double w = slice_weight(all, r, N);
      EXPECT_DOUBLE_EQ(w, static_cast<double>(N) * static_cast<double>(s.counted_positions()) /
                              static_cast<double>(all.counted_positions()));
      weights += w;
    }
    EXPECT_EQ(tokens, all.tokens);
    EXPECT_EQ(mask, all.loss_mask);
    EXPECT_NEAR(weights, N, 1e-12);
  }
  model::Batch plain = all;
  plain.loss_mask.clear();
  plain.cu_seqlens.clear();
  EXPECT_EQ(slice_weight(plain, 1, 4), 1.0);  // exactly: no rounding enters without a mask
  EXPECT_NE(message_of([&] { rank_slice(all, 0, 3); })
                .find("train.batch_size = 8 rows cannot be split evenly over 3 ranks"),
            std::string::npos);
}

TEST(DataParallelGlue, ChecksumMismatchNamesStepAndRanks) {
  dist::FakeGroup group(4);
  const std::string msg = message_of([&] {
    group.run([](dist::Communicator& c) {
      std::vector<float> p(10, 1.0f);
      check_same_params(c, params_checksum<float>(p), 6);  // all equal: passes
      if (c.rank() == 1 || c.rank() == 3) p[7] = std::nextafter(1.0f, 2.0f);  // one ulp
      check_same_params(c, params_checksum<float>(p), 7);
    });
  });
  EXPECT_NE(msg.find("step 7: the parameters differ across ranks"), std::string::npos) << msg;
  EXPECT_NE(msg.find("rank(s) 1, 3 differ from rank 0"), std::string::npos) << msg;
}

// ---------------------------------------------------------------------------------------
// float64: the glue driving Model<double>, several steps of SGD, N ranks against one
// process in the same order.

model::ModelConfig tiny_model() {
  model::ModelConfig c;
  c.vocab_size = 11;
  c.width = 8;
  c.layers = 2;
  c.heads = 2;
  c.kv_heads = 1;
  c.head_dim = 4;
  c.mlp_hidden = 12;
  c.seq_len = 6;
  c.tied_embeddings = false;
  c.init_std = 0.3;
  c.attention.kind = model::AttentionKind::moba;
  c.attention.block_size = 3;
  c.attention.top_k = 2;
  return c;
}

constexpr int kSteps = 4, kAccum = 2;
constexpr double kLr = 0.05;

// The global micro-batch `index`: 8 rows, packed documents with a loss mask.
model::Batch global_batch(uint64_t index) { return packed_batch(8, 6, 11, 100 + index); }

struct Float64Run {
  std::vector<double> params, losses;
};

// N ranks on threads, the data-parallel way.
std::vector<Float64Run> data_parallel_float64(int N) {
  std::vector<Float64Run> out(static_cast<size_t>(N));
  dist::FakeGroup group(N);
  group.run([&](dist::Communicator& c) {
    model::Model<double> m(tiny_model());
    std::vector<double> P(m.layout().total), G(P.size());
    model::init_params<double>(m.layout(), 9, P);
    HostGradReducer reducer(m.layout(), sizeof(double), 256);  // several buckets
    EXPECT_GT(reducer.buckets().buckets().size(), 3u);
    std::vector<double> losses;
    uint64_t next = 0;
    for (int step = 0; step < kSteps; ++step) {
      std::fill(G.begin(), G.end(), 0.0);
      double loss = 0.0;
      for (int micro = 0; micro < kAccum; ++micro) {
        const model::Batch global = global_batch(next++);
        const double w = slice_weight(global, c.rank(), N);
        const double l = m.forward(P, rank_slice(global, c.rank(), N), true);
        m.backward(P, G, w / kAccum);
        loss += w * l / kAccum;
      }
      reducer.reduce<double>(c, G);
      double v[1] = {loss};
      c.all_reduce_sum_host(v);
      losses.push_back(v[0] / N);
      for (size_t i = 0; i < P.size(); ++i) P[i] -= kLr * G[i];
      check_same_params(c, params_checksum<double>(P), step + 1);
    }
    out[static_cast<size_t>(c.rank())] = {P, losses};
  });
  return out;
}

// One process: the slices' gradients each into its own array, summed in rank order and
// divided by N; slices = 1 is the plain backward over the whole batch.
Float64Run fixed_order_float64(int slices) {
  model::Model<double> m(tiny_model());
  std::vector<double> P(m.layout().total), sum(P.size());
  model::init_params<double>(m.layout(), 9, P);
  std::vector<std::vector<double>> G(static_cast<size_t>(slices), std::vector<double>(P.size()));
  Float64Run run;
  uint64_t next = 0;
  for (int step = 0; step < kSteps; ++step) {
    for (auto& g : G) std::fill(g.begin(), g.end(), 0.0);
    std::vector<double> loss(static_cast<size_t>(slices), 0.0);
    for (int micro = 0; micro < kAccum; ++micro) {
      const model::Batch global = global_batch(next++);
      for (int r = 0; r < slices; ++r) {
        const double w = slice_weight(global, r, slices);
        const double l = m.forward(P, rank_slice(global, r, slices), true);
        m.backward(P, G[static_cast<size_t>(r)], w / kAccum);
        loss[static_cast<size_t>(r)] += w * l / kAccum;
      }
    }
    sum = G[0];
    double total = loss[0];
    for (int r = 1; r < slices; ++r) {
      for (size_t i = 0; i < sum.size(); ++i) sum[i] += G[static_cast<size_t>(r)][i];
      total += loss[static_cast<size_t>(r)];
    }
    for (double& g : sum) g /= static_cast<double>(slices);
    run.losses.push_back(total / slices);
    for (size_t i = 0; i < P.size(); ++i) P[i] -= kLr * sum[i];
  }
  run.params = P;
  return run;
}

TEST(TrainerDataParallel, Float64EqualsOneProcessInTheSameOrderBitForBit) {
  const Float64Run whole = fixed_order_float64(1);
  for (int N : {2, 4}) {
    SCOPED_TRACE(N);
    const std::vector<Float64Run> dp = data_parallel_float64(N);
    const Float64Run want = fixed_order_float64(N);
    for (int r = 0; r < N; ++r) {
      ASSERT_EQ(dp[static_cast<size_t>(r)].params, want.params) << "rank " << r;
      ASSERT_EQ(dp[static_cast<size_t>(r)].losses, want.losses) << "rank " << r;
    }
    // The loss-mask weights make the slices' mean the batch's mean: one process on the
    // whole batch agrees to rounding (its sums are grouped otherwise).
    for (int s = 0; s < kSteps; ++s)
      EXPECT_NEAR(dp[0].losses[static_cast<size_t>(s)], whole.losses[static_cast<size_t>(s)],
                  1e-13);
    double worst = 0.0;
    for (size_t i = 0; i < whole.params.size(); ++i)
      worst = std::max(worst, std::abs(dp[0].params[i] - whole.params[i]));
    EXPECT_LT(worst, 1e-13);
    // And not bit for bit: were it so, the fixed order above would prove nothing.
    EXPECT_NE(dp[0].params, whole.params);
  }
}

// ---------------------------------------------------------------------------------------
// float32: the Trainer itself.

RunConfig dp_config() {
  return parse_config(R"(
name = "dp"
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
batch_size = 4
grad_accum = 2
steps = 8
lr = 1e-2
warmup_steps = 3
grad_clip = 0.5
[eval]
every = 5
windows = 3
batch_size = 2
[checkpoint]
every = 4
)",
                      "dp.toml");
}

struct TrainerRun {
  std::vector<float> params;
  std::vector<double> losses;
};

// One process, the trainer's step written out with `slices(step)` slices per global
// micro-batch in a fixed order (1: a single process on the whole batch). Same model,
// data, schedule, clipping and AdamW as the Trainer.
TrainerRun fixed_order_trainer(const RunConfig& cfg0, const std::function<int(int64_t)>& slices) {
  const RunConfig cfg = cfg0.resolved();
  model::Model<float> m(cfg.model);
  const model::ParamLayout& layout = m.layout();
  std::vector<float> P(layout.total), sum(layout.total);
  model::init_params<float>(layout, cfg.train.seed, P);
  AdamW adam(layout, cfg.train);
  const std::unique_ptr<BatchSource> data = make_batch_source(cfg, "");
  const int64_t accum = cfg.train.grad_accum;
  TrainerRun run;
  uint64_t next = 0;
  int64_t tokens = 0;
  for (int64_t step = 0; step < cfg.train.steps; ++step) {
    const int N = slices(step + 1);
    const double lr = learning_rate(cfg.train, step);
    const bool moba = moba_phase_at(cfg, tokens);
    std::vector<std::vector<float>> G(static_cast<size_t>(N), std::vector<float>(layout.total, 0.0f));
    std::vector<double> loss(static_cast<size_t>(N), 0.0);
    for (int64_t micro = 0; micro < accum; ++micro) {
      const model::Batch global = data->train_batch(next++);
      for (int r = 0; r < N; ++r) {
        const double w = slice_weight(global, r, N);
        const double l = m.forward(P, rank_slice(global, r, N), moba);
        m.backward(P, G[static_cast<size_t>(r)], w / static_cast<double>(accum));
        loss[static_cast<size_t>(r)] += w * l / static_cast<double>(accum);
      }
    }
    sum = G[0];
    double total = loss[0];
    for (int r = 1; r < N; ++r) {
      for (size_t i = 0; i < sum.size(); ++i) sum[i] += G[static_cast<size_t>(r)][i];
      total += loss[static_cast<size_t>(r)];
    }
    if (N > 1)
      for (float& g : sum) g /= static_cast<float>(N);
    run.losses.push_back(total / N);
    const double gnorm = grad_norm(sum);
    clip_grads(sum, gnorm, cfg.train.grad_clip);
    adam.step(P, sum, lr);
    tokens += cfg.train.tokens_per_step(cfg.model.seq_len);
  }
  run.params = P;
  return run;
}

TrainerOptions rank_options(const std::string& dir, bool resume, dist::Communicator& c,
                            int64_t check_every = 100) {
  TrainerOptions o{dir, "", resume, nullptr};
  o.comm = &c;
  o.dist_check_every = check_every;
  o.dist_bucket_bytes = 4096;  // several buckets on this model
  return o;
}

// The Trainer on N fake ranks; every rank's final parameters and losses.
std::vector<TrainerRun> trainer_ranks(const RunConfig& cfg, const std::string& dir, int N,
                                      bool resume = false, int64_t stop_after = -1) {
  std::vector<TrainerRun> out(static_cast<size_t>(N));
  dist::FakeGroup group(N, std::chrono::milliseconds(60000));
  group.run([&](dist::Communicator& c) {
    Trainer t(cfg, rank_options(dir, resume, c));
    EXPECT_EQ(t.rank(), c.rank());
    EXPECT_EQ(t.world(), N);
    t.run(stop_after);
    auto p = t.params();
    out[static_cast<size_t>(c.rank())] = {std::vector<float>(p.begin(), p.end()), t.step_losses()};
  });
  return out;
}

TEST(TrainerDataParallel, EqualsOneProcessInTheSameOrderBitForBit) {
  const RunConfig cfg = dp_config();
  const TrainerRun whole = fixed_order_trainer(cfg, [](int64_t) { return 1; });
  for (int N : {2, 4}) {
    SCOPED_TRACE(N);
    TempDir dir;
    const std::vector<TrainerRun> dp = trainer_ranks(cfg, dir / "run", N);
    const TrainerRun want = fixed_order_trainer(cfg, [N](int64_t) { return N; });
    ASSERT_EQ(want.losses.size(), 8u);
    for (int r = 0; r < N; ++r) {
      ASSERT_EQ(dp[static_cast<size_t>(r)].losses, want.losses) << "rank " << r;
      ASSERT_EQ(dp[static_cast<size_t>(r)].params, want.params) << "rank " << r;
    }
    // Against a single process on the whole batch: the same run up to float32 rounding.
    for (size_t s = 0; s < whole.losses.size(); ++s)
      EXPECT_NEAR(dp[0].losses[s], whole.losses[s], 1e-4 * std::abs(whole.losses[s])) << s;
    // Only rank 0 wrote: one metrics line per step (and the validations), the checkpoint
    // of step 8 holding its (everyone's) parameters, run.json finished.
    const auto lines = read_lines(dir / "run/metrics.jsonl");
    int train = 0;
    for (const auto& l : lines)
      if (l["kind"] == "train") {
        EXPECT_EQ(l["loss"].get<double>(), want.losses[static_cast<size_t>(train)]);
        ++train;
      }
    EXPECT_EQ(train, 8);
    EXPECT_EQ(testing::read_json(dir / "run/run.json")["status"], "finished");
    EXPECT_EQ(testing::read_json(dir / "run/checkpoint/state.json")["step"], 8);
  }
}

TEST(TrainerDataParallel, ResumeOnAnotherRankCountReadsTheSameData) {
  const RunConfig cfg = dp_config();
  for (auto [first, second] : {std::pair{2, 4}, std::pair{4, 2}, std::pair{1, 2}}) {
    SCOPED_TRACE(std::to_string(first) + " then " + std::to_string(second) + " ranks");
    TempDir dir;
    // Stopped after step 6: the checkpoint holds step 4, so steps 5-6 are trained again.
    trainer_ranks(cfg, dir / "run", first, false, 6);
    EXPECT_EQ(testing::read_json(dir / "run/checkpoint/state.json")["step"], 4);
    const std::vector<TrainerRun> dp = trainer_ranks(cfg, dir / "run", second, true);
    const TrainerRun want =
        fixed_order_trainer(cfg, [&](int64_t step) { return step <= 4 ? first : second; });
    for (int r = 0; r < second; ++r)
      ASSERT_EQ(dp[static_cast<size_t>(r)].params, want.params) << "rank " << r;
    // The resumed session's losses are steps 5-8 of the fixed-order run.
    ASSERT_EQ(dp[0].losses, std::vector<double>(want.losses.begin() + 4, want.losses.end()));
    const auto lines = read_lines(dir / "run/metrics.jsonl");
    std::vector<int64_t> steps;
    for (const auto& l : lines)
      if (l["kind"] == "train") steps.push_back(l["step"].get<int64_t>());
    EXPECT_EQ(steps, (std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8}));
  }
}

TEST(TrainerDataParallel, PerturbedRankIsCaughtNamingTheStep) {
  RunConfig cfg = dp_config();
  cfg.checkpoint_every = 100;  // the periodic check alone (every 2 steps) must catch it
  for (auto [N, bad] : {std::pair{2, 1}, std::pair{4, 2}}) {
    SCOPED_TRACE(N);
    TempDir dir;
    dist::FakeGroup group(N, std::chrono::milliseconds(60000));
    const std::string msg = message_of([&] {
      group.run([&](dist::Communicator& c) {
        Trainer t(cfg, rank_options(dir / "run", false, c, 2));
        t.run(2);
        if (c.rank() == bad) t.params()[t.model().layout().find("final_norm")->offset] += 1e-3f;
        t.run();
      });
    });
    EXPECT_NE(msg.find("step 4: the parameters differ across ranks"), std::string::npos) << msg;
    EXPECT_NE(msg.find("rank(s) " + std::to_string(bad) + " differ from rank 0"),
              std::string::npos)
        << msg;
    // Rank 0 marked the run failed; no checkpoint was written after the mismatch.
    EXPECT_EQ(testing::read_json(dir / "run/run.json")["status"], "failed");
    EXPECT_FALSE(std::filesystem::exists(dir / "run/checkpoint"));
  }
}

TEST(TrainerDataParallel, BadSetupsAreErrorsOnEveryRank) {
  const RunConfig cfg = dp_config();  // batch_size = 4
  TempDir dir;
  dist::FakeGroup three(3);
  std::string msg = message_of([&] {
    three.run([&](dist::Communicator& c) { Trainer t(cfg, rank_options(dir / "a", false, c)); });
  });
  EXPECT_NE(msg.find("train.batch_size = 4 rows cannot be split evenly over 3 ranks"),
            std::string::npos)
      << msg;
  // Rank 0 refusing the folder (it holds a run) stops the others at their first meeting.
  { Trainer(cfg, {dir / "b", "", false, nullptr}).run(1); }
  dist::FakeGroup two(2);
  msg = message_of([&] {
    two.run([&](dist::Communicator& c) { Trainer t(cfg, rank_options(dir / "b", false, c)); });
  });
  EXPECT_NE(msg.find("rank 0 failed"), std::string::npos) << msg;
  EXPECT_NE(msg.find("already holds a run"), std::string::npos) << msg;
}

}  // namespace
}  // namespace moba::train
