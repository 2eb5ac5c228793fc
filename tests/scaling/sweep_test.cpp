// `moba sweep` end to end on micro models: a sweep trains every run, a second invocation
// skips them, an interrupted run resumes from its checkpoint bit for bit, a changed preset
// is refused; and the token-shard source gives deterministic batches.
#include "scaling/sweep.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include "core/build_info.h"
#include "data/prepare.h"
#include "scaling/plan_times.h"
#include "scaling/runs.h"
#include "scaling/temp_dir.h"
#include "train/shard_source.h"

namespace moba::scaling {
namespace {

namespace fs = std::filesystem;
using testing::expect_error;
using testing::read_file;
using testing::TempDir;
using testing::write_file;

// 2 sizes x 2 attention types; T = 32 in 4 MoBA blocks of 8 (K = 2: sparse); a few steps.
SweepConfig micro(const std::string& data) {
  SweepConfig s = parse_sweep_config(R"(
name = "micro"
attention = ["full", "moba"]
[ladder]
layers = [1, 2]
head_dim = 4
tokens = [768, 1024]            # 12 and 16 steps of 64 tokens
eval_points = 3
[base]
data = ")" + data + R"("
[base.model]
vocab_size = 256
seq_len = 32
mlp_multiple_of = 4
[base.attention]
block_size = 8
top_k = 2
[base.train]
batch_size = 2
[base.eval]
windows = 4
bucket_size = 8
)",
                                     "micro.toml");
  return s;
}

SweepOptions quiet(const fs::path& runs) {
  SweepOptions o;
  o.runs_dir = runs.string();
  o.out = nullptr;
  return o;
}

// A small prepared folder of byte-level documents long enough for T = 32 windows.
fs::path make_shards(const fs::path& root) {
  std::mt19937_64 g(3);
  const char* words[] = {"moba ", "block ", "attention ", "gate ", "query ", "key\n", "value. "};
  for (int d = 0; d < 24; ++d) {
    std::string text;
    const int n = 20 + static_cast<int>(g() % 200);
    for (int w = 0; w < n; ++w) text += words[g() % 7];
    write_file(root / "docs" / ("doc" + std::to_string(d) + ".txt"), text);
  }
  data::PrepareConfig pc;
  pc.inputs = {(root / "docs").string()};
  pc.out_dir = (root / "shards").string();
  pc.tokenizer = "byte";
  pc.val_fraction = 0.3;
  pc.threads = 1;
  pc.progress = false;
  data::prepare(pc, nullptr);
  return root / "shards";
}

std::vector<int64_t> val_steps(const fs::path& run) {
  std::vector<int64_t> steps;
  for (const ValPoint& v : read_run(run).val) steps.push_back(v.step);
  return steps;
}

TEST(Sweep, TrainsSkipsResumes) {
  TempDir dir;
  const SweepConfig s = micro("synthetic:assoc_recall");
  const Plan plan = make_plan(s);
  ASSERT_EQ(plan.runs.size(), 4u);

  // 1. The whole sweep.
  SweepSummary a = run_sweep(s, quiet(dir.path() / "a"));
  EXPECT_EQ(a.trained, 4);
  EXPECT_EQ(a.failed, 0);
  EXPECT_TRUE(fs::exists(dir.path() / "a" / "plan.json"));
  EXPECT_EQ(nlohmann::json::parse(read_file(dir.path() / "a" / "plan.json"))["device"], "cpu");
  const std::vector<scaling::Run> runs = read_runs(dir.path() / "a");
  ASSERT_EQ(runs.size(), 4u);
  for (const scaling::Run& r : runs) {
    EXPECT_EQ(r.info.status, "finished") << r.dir;
    EXPECT_GE(r.val.size(), 3u) << r.dir;
    // The planner's FLOPs are the trainer's, in both conventions.
    for (const PlannedRun& p : plan.runs)
      if (p.config.name == r.info.name) {
        EXPECT_NEAR(r.val.back().flops_exec, p.flops_exec, 1e-9 * p.flops_exec) << r.dir;
        EXPECT_NEAR(r.val.back().flops_6nd, p.flops_6nd, 1e-9 * p.flops_6nd) << r.dir;
        EXPECT_EQ(r.val.back().tokens, p.tokens) << r.dir;
      }
  }

  // 2. Again: everything is skipped, nothing is rewritten.
  const std::string metrics = read_file(dir.path() / "a" / "micro-L2-moba" / "metrics.jsonl");
  SweepSummary again = run_sweep(s, quiet(dir.path() / "a"));
  EXPECT_EQ(again.skipped, 4);
  EXPECT_EQ(again.trained + again.resumed, 0);
  EXPECT_EQ(read_file(dir.path() / "a" / "micro-L2-moba" / "metrics.jsonl"), metrics);

  // 3. Interrupted: the first run stops after its second checkpoint's step (as if killed),
  // the next invocation resumes it and trains the rest; it ends as the uninterrupted run.
  const PlannedRun& first = plan.runs[0];
  const int64_t stop = 2 * first.config.checkpoint_every;
  ASSERT_LT(stop, first.config.train.steps);
  SweepOptions o = quiet(dir.path() / "b");
  o.interrupt_after_steps = stop;
  SweepSummary cut = run_sweep(s, o);
  EXPECT_TRUE(cut.interrupted);
  const fs::path b0 = dir.path() / "b" / first.config.name;
  EXPECT_EQ(read_run(b0).info.status, "running");
  EXPECT_FALSE(fs::exists(dir.path() / "b" / plan.runs[1].config.name));
  SweepSummary rest = run_sweep(s, quiet(dir.path() / "b"));
  EXPECT_EQ(rest.resumed, 1);
  EXPECT_EQ(rest.trained, 3);
  EXPECT_EQ(read_run(b0).info.status, "finished");
  EXPECT_EQ(val_steps(b0), val_steps(dir.path() / "a" / first.config.name));
  const std::vector<scaling::Run> b = read_runs(dir.path() / "b");
  for (size_t i = 0; i < b.size(); ++i) {
    ASSERT_EQ(b[i].val.size(), runs[i].val.size());
    EXPECT_EQ(b[i].val.back().loss, runs[i].val.back().loss) << b[i].dir << ": resume is exact";
  }

  // 4. A run folder from another configuration is refused, not overwritten.
  SweepConfig changed = s;
  changed.lr.max = 1e-4;
  expect_error([&] { run_sweep(changed, quiet(dir.path() / "a")); }, "differs from the plan");
}

// A later piece of a study into the same folder (here the ladder's other size): plan.json
// keeps the first piece's runs, marked, beside the second's; a run planned again is the new
// plan's entry alone.
TEST(Sweep, ALaterPieceKeepsTheEarlierPlannedRuns) {
  TempDir dir;
  SweepConfig first = micro("synthetic:assoc_recall");
  first.ladder.layers = {1};
  SweepConfig second = micro("synthetic:assoc_recall");
  second.ladder.layers = {1, 2};
  second.attention = {"moba"};
  EXPECT_EQ(run_sweep(first, quiet(dir.path())).trained, 2);
  EXPECT_EQ(run_sweep(second, quiet(dir.path())).trained, 1);  // micro-L1-moba is finished
  const auto plan = nlohmann::json::parse(read_file(dir.path() / "plan.json"));
  std::map<std::string, bool> earlier;
  for (const auto& r : plan["runs"]) earlier[r["name"]] = r.value("from_earlier_plan", false);
  EXPECT_EQ(earlier, (std::map<std::string, bool>{
                         {"micro-L1-full", true}, {"micro-L1-moba", false}, {"micro-L2-moba", false}}));
  // The report's time table names every run folder (none is "not in the plan").
  const auto times = plan_times(read_runs(dir.path()), dir.path());
  ASSERT_TRUE(times.has_value());
  EXPECT_EQ(times->rows.size(), 3u);
  EXPECT_EQ(times->not_in_plan, 0);
}

TEST(Sweep, StartedRunWithoutCheckpointStartsAnew) {
  TempDir dir;
  const SweepConfig s = micro("synthetic:assoc_recall");
  SweepOptions o = quiet(dir.path());
  o.interrupt_after_steps = 0;  // the folder is made, no step, no checkpoint
  run_sweep(s, o);
  SweepSummary rest = run_sweep(s, quiet(dir.path()));
  EXPECT_EQ(rest.trained, 4);
  EXPECT_EQ(rest.resumed, 0);
}

// --device: only cpu or cuda; shown with the plan; cuda needs the kernels and a device,
// checked before any run folder is made (the GPU path itself is tested on the device).
TEST(Sweep, DeviceIsCheckedAndShown) {
  TempDir dir;
  const SweepConfig s = micro("synthetic:assoc_recall");
  SweepOptions bad = quiet(dir.path() / "runs");
  bad.device = "tpu";
  expect_error([&] { run_sweep(s, bad); }, "--device must be cpu or cuda, got 'tpu'");

  SweepOptions plan_only = quiet(dir.path() / "runs");
  plan_only.device = "cuda";
  plan_only.plan_only = true;
  std::FILE* f = std::tmpfile();
  plan_only.out = f;
  run_sweep(s, plan_only);  // planning needs no device
  std::rewind(f);
  std::string text(4096, '\0');
  text.resize(std::fread(text.data(), 1, text.size(), f));
  std::fclose(f);
  EXPECT_NE(text.find("device: cuda (every run trains in bf16"), std::string::npos) << text;

  std::string why;
  if (built_with_cuda() && !cuda_devices(&why).empty())
    GTEST_SKIP() << "a CUDA device is present: the refusal cannot be tested here";
  SweepOptions cuda = quiet(dir.path() / "runs");
  cuda.device = "cuda";
  expect_error([&] { run_sweep(s, cuda); },
               built_with_cuda() ? "--device cuda: no CUDA device" : "built without the CUDA kernels");
  EXPECT_FALSE(fs::exists(dir.path() / "runs" / "micro-L1-full"));
}

TEST(Sweep, RefusesHeavyDataReuseUnlessForced) {
  TempDir dir;
  const fs::path shards = make_shards(dir.path());
  SweepConfig s = micro(shards.string());
  s.ladder.tokens = {1e5, 1e5};  // on about ten thousand training tokens
  expect_error([&] { run_sweep(s, quiet(dir.path() / "runs")); }, "--force-reuse");
  EXPECT_FALSE(fs::exists(dir.path() / "runs" / "micro-L1-full"));
  SweepOptions plan_only = quiet(dir.path() / "runs");
  plan_only.plan_only = true;
  run_sweep(s, plan_only);  // prints the plan and the refusal, does not throw
  SweepOptions forced = quiet(dir.path() / "runs");
  forced.force_reuse = true;
  expect_error([&] { run_sweep(micro((dir.path() / "absent").string()), forced); },
               "no manifest.json");
}

TEST(Sweep, TrainsOnTokenShards) {
  TempDir dir;
  const fs::path shards = make_shards(dir.path());
  SweepConfig s = micro(shards.string());
  s.ladder.layers = {1};
  s.attention = {"moba"};
  SweepOptions o = quiet(dir.path() / "runs");
  o.force_reuse = true;
  EXPECT_EQ(run_sweep(s, o).trained, 1);
  const scaling::Run r = read_run(dir.path() / "runs" / "micro-L1-moba");
  EXPECT_EQ(r.info.status, "finished");
  EXPECT_EQ(r.info.bytes_per_token, 1.0);
  EXPECT_LT(r.val.back().loss, std::log(256.0));
}

TEST(ShardSource, DeterministicBatchesFromTheShards) {
  TempDir dir;
  const fs::path shards = make_shards(dir.path());
  train::ShardSource a(shards.string(), 256, 32, 3, 5, 7), b(shards.string(), 256, 32, 3, 5, 7);
  train::ShardSource other_seed(shards.string(), 256, 32, 3, 5, 8);
  for (uint64_t i : {0ULL, 1ULL, 17ULL}) {
    const model::Batch x = a.train_batch(i);
    EXPECT_EQ(x.B, 3);
    EXPECT_EQ(x.T, 32);
    EXPECT_EQ(x.tokens.size(), 3u * 33u);
    EXPECT_TRUE(x.cu_seqlens.empty()) << "document rows: one document per row";
    EXPECT_EQ(x.tokens, b.train_batch(i).tokens) << "a pure function of (seed, index)";
    EXPECT_NE(x.tokens, a.train_batch(i + 1).tokens);
    EXPECT_NE(x.tokens, other_seed.train_batch(i).tokens);
    // Rows are text of one document: no NUL, only the bytes of the words.
    for (int32_t t : x.tokens)
      EXPECT_TRUE(t == '\n' || t == ' ' || t == '.' || (t >= 'a' && t <= 'z'));
  }
  // Reading in another order gives the same batch (no hidden cursor).
  const model::Batch later = a.train_batch(5);
  a.train_batch(2);
  EXPECT_EQ(a.train_batch(5).tokens, later.tokens);
  const std::vector<train::Window> v = a.validation();
  ASSERT_EQ(v.size(), 5u);
  EXPECT_EQ(v[0].tokens.size(), 33u);
  const std::vector<train::Window> v2 = b.validation();
  for (size_t i = 0; i < v.size(); ++i) EXPECT_EQ(v[i].tokens, v2[i].tokens);
  EXPECT_EQ(a.bytes_per_token(), 1.0);
  EXPECT_NE(a.describe().find("document windows"), std::string::npos);
  expect_error([&] { train::ShardSource(shards.string(), 256, 100000, 1, 1, 1); },
               "no training document holds");
  expect_error([&] { train::ShardSource(shards.string(), 100, 32, 1, 1, 1); }, "vocabulary");
  expect_error([&] { train::ShardSource((dir.path() / "none").string(), 256, 32, 1, 1, 1); },
               "moba prepare");
}

}  // namespace
}  // namespace moba::scaling
