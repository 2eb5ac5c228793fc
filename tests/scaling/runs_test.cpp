// Reading run folders: the contract of docs/run_format.md, and clear errors naming the
// file and line when a file breaks it.
#include <gtest/gtest.h>

#include <cmath>

#include "scaling/curves.h"
#include "scaling/runs.h"
#include "scaling/temp_dir.h"

namespace moba::scaling {
namespace {

using testing::expect_error;
using testing::TempDir;
using testing::write_file;

std::string run_json(const std::string& name, const std::string& attention,
                     const std::string& status = "finished") {
  return R"({"name": ")" + name + R"(", "attention": ")" + attention +
         R"(", "block_size": 512, "top_k": 3, "layers": 4, "heads": 4, "kv_heads": 4,
  "width": 256, "head_dim": 64, "seq_len": 8192, "vocab_size": 256,
  "params_non_embedding": 3145728, "params_total": 3276800, "tokens_planned": 62914560,
  "status": ")" + status + R"(", "bytes_per_token": 1.0})";
}

const char* kMetrics =
    R"({"kind": "train", "step": 10, "tokens": 81920, "loss": 5.1, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 1000, "flops_6nd": 1.5e12, "flops_exec": 2.0e12, "elapsed_s": 3.0}
{"kind": "val", "step": 0, "tokens": 0, "flops_6nd": 0, "flops_exec": 0, "loss": 5.55, "bucket_size": 2048, "bucket_losses": [5.6, 5.5, 5.5, 5.6], "trailing_loss": null, "windows": 8}
{"kind": "val", "step": 10, "tokens": 81920, "flops_6nd": 8.64e17, "flops_exec": 1.728e18, "loss": 4.0, "bucket_size": 2048, "bucket_losses": [4.4, 4.0, null, 3.7], "trailing_loss": 3.75, "windows": 8}

{"kind": "val", "step": 20, "tokens": 163840, "flops_6nd": 1.728e18, "flops_exec": 3.456e18, "loss": 3.5, "bucket_size": 2048, "bucket_losses": [3.9, 3.5, 3.4, 3.2], "trailing_loss": 3.25, "windows": 8}
)";

TEST(Runs, ReadsTheContract) {
  TempDir tmp;
  write_file(tmp.path() / "a" / "run.json", run_json("a", "moba"));
  write_file(tmp.path() / "a" / "metrics.jsonl", kMetrics);
  const scaling::Run r = read_run(tmp.path() / "a");
  EXPECT_EQ(r.info.name, "a");
  EXPECT_EQ(r.info.attention, "moba");
  EXPECT_EQ(r.info.params_non_embedding, 3145728);
  EXPECT_DOUBLE_EQ(r.info.bytes_per_token, 1.0);
  ASSERT_EQ(r.val.size(), 3u);
  ASSERT_EQ(r.train.size(), 1u);
  EXPECT_TRUE(std::isnan(r.val[0].trailing_loss));
  EXPECT_TRUE(std::isnan(r.val[1].bucket_losses[2]));
  EXPECT_DOUBLE_EQ(r.val[2].bucket_losses[3], 3.2);
  EXPECT_DOUBLE_EQ(r.val[2].trailing_loss, 3.25);
  EXPECT_TRUE(r.warnings.empty());
}

TEST(Runs, MetricsAndCurves) {
  TempDir tmp;
  write_file(tmp.path() / "a" / "run.json", run_json("a", "full"));
  write_file(tmp.path() / "a" / "metrics.jsonl", kMetrics);
  const scaling::Run r = read_run(tmp.path() / "a");
  // 8.64e17 FLOPs = 0.01 PFLOP/s-days; the step-0 point (no compute) is left out.
  const Curve lm = make_curve(r, 0, Metric::lm(), Compute::k6nd);
  ASSERT_EQ(lm.c.size(), 2u);
  EXPECT_DOUBLE_EQ(lm.c[0], 0.01);
  EXPECT_DOUBLE_EQ(lm.c[1], 0.02);
  EXPECT_DOUBLE_EQ(lm.loss[1], 3.5);
  const Curve exec = make_curve(r, 0, Metric::lm(), Compute::kExec);
  EXPECT_DOUBLE_EQ(exec.c[0], 0.02);
  // A null bucket value drops that point from the bucket's curve only.
  EXPECT_EQ(make_curve(r, 0, Metric::position_bucket(2), Compute::k6nd).c.size(), 1u);
  EXPECT_EQ(make_curve(r, 0, Metric::position_bucket(3), Compute::k6nd).c.size(), 2u);
  EXPECT_EQ(make_curve(r, 0, Metric::trailing(), Compute::k6nd).c.size(), 2u);
  EXPECT_EQ(make_curve(r, 0, Metric::position_bucket(9), Compute::k6nd).c.size(), 0u);
  const auto metrics = metrics_present({r});
  ASSERT_EQ(metrics.size(), 6u);  // lm, 4 buckets, trailing
  EXPECT_EQ(metrics.front(), Metric::lm());
  EXPECT_EQ(metrics.back(), Metric::trailing());
  EXPECT_EQ(common_bucket_size({r}), 2048);
}

TEST(Runs, MetricNamesAndLabels) {
  EXPECT_EQ(Metric::parse("lm"), Metric::lm());
  EXPECT_EQ(Metric::parse("trailing"), Metric::trailing());
  EXPECT_EQ(Metric::parse("bucket:2"), Metric::position_bucket(2));
  EXPECT_EQ(Metric::position_bucket(2).label(2048), "LM loss 4K-6K");
  EXPECT_EQ(Metric::position_bucket(0).label(1000), "LM loss 0-1000");
  EXPECT_EQ(Metric::lm().label(2048), "LM loss");
  EXPECT_EQ(Metric::position_bucket(3).id(), "bucket:3");
  expect_error([] { Metric::parse("bucket:x"); }, "metric must be lm, trailing or bucket:I");
  expect_error([] { Metric::parse("bucket:-1"); }, "bucket:I");
  expect_error([] { Metric::parse("loss"); }, "got 'loss'");
  expect_error([] { parse_compute("6ND"); }, "6nd or exec");
}

TEST(Runs, MalformedMetricsLineNamesFileAndLine) {
  TempDir tmp;
  write_file(tmp.path() / "a" / "run.json", run_json("a", "moba"));
  write_file(tmp.path() / "a" / "metrics.jsonl",
             std::string(kMetrics).substr(0, std::string(kMetrics).find("\n\n")) +
                 "\n{\"kind\": \"val\", \"step\": 30,,}\n");
  expect_error([&] { read_run(tmp.path() / "a"); }, "metrics.jsonl:4:28: malformed JSON: syntax error");
}

TEST(Runs, MalformedRunJsonNamesFileAndLine) {
  TempDir tmp;
  write_file(tmp.path() / "a" / "run.json", "{\n  \"name\": \"a\",\n  \"attention\": moba\n}\n");
  expect_error([&] { read_run(tmp.path() / "a"); }, "run.json:3:16: malformed JSON: syntax error");
}

TEST(Runs, FieldErrorsNameTheField) {
  TempDir tmp;
  write_file(tmp.path() / "a" / "run.json", "{\"name\": \"a\", \"status\": \"finished\"}");
  expect_error([&] { read_run(tmp.path() / "a"); }, "missing field 'attention'");
  write_file(tmp.path() / "a" / "run.json", run_json("a", "sparse"));
  expect_error([&] { read_run(tmp.path() / "a"); }, "field 'attention' must be");
  write_file(tmp.path() / "a" / "run.json", run_json("a", "moba", "done"));
  expect_error([&] { read_run(tmp.path() / "a"); }, "field 'status' must be");
  write_file(tmp.path() / "a" / "run.json", run_json("a", "moba"));
  write_file(tmp.path() / "a" / "metrics.jsonl",
             "{\"kind\": \"val\", \"step\": 1, \"tokens\": 1, \"flops_6nd\": 1, "
             "\"flops_exec\": 1, \"loss\": \"low\"}\n");
  expect_error([&] { read_run(tmp.path() / "a"); },
               "metrics.jsonl:1: field 'loss' must be a number, got string");
  write_file(tmp.path() / "a" / "metrics.jsonl", "[1, 2]\n");
  expect_error([&] { read_run(tmp.path() / "a"); }, "metrics.jsonl:1: expected a JSON object");
  write_file(tmp.path() / "a" / "metrics.jsonl",
             "{\"kind\": \"val\", \"step\": 1, \"tokens\": 1, \"flops_6nd\": 1}\n");
  expect_error([&] { read_run(tmp.path() / "a"); }, "missing field 'flops_exec'");
}

TEST(Runs, HalfWrittenLastLineOfARunningRunIsSkipped) {
  TempDir tmp;
  const std::string cut = std::string(kMetrics) + "{\"kind\": \"val\", \"st";
  write_file(tmp.path() / "a" / "run.json", run_json("a", "moba", "running"));
  write_file(tmp.path() / "a" / "metrics.jsonl", cut);
  const scaling::Run r = read_run(tmp.path() / "a");
  EXPECT_TRUE(r.running());
  EXPECT_EQ(r.val.size(), 3u);
  ASSERT_EQ(r.warnings.size(), 1u);
  EXPECT_NE(r.warnings[0].find("incomplete last line"), std::string::npos);
  // A finished run has no excuse.
  write_file(tmp.path() / "a" / "run.json", run_json("a", "moba", "finished"));
  expect_error([&] { read_run(tmp.path() / "a"); }, "metrics.jsonl:6:");
}

TEST(Runs, DuplicateStepsKeepTheLaterLine) {
  TempDir tmp;
  write_file(tmp.path() / "a" / "run.json", run_json("a", "moba"));
  write_file(tmp.path() / "a" / "metrics.jsonl",
             std::string(kMetrics) +
                 R"({"kind": "val", "step": 20, "tokens": 163840, "flops_6nd": 1.728e18, "flops_exec": 3.456e18, "loss": 3.4})"
                 "\n");
  const scaling::Run r = read_run(tmp.path() / "a");
  ASSERT_EQ(r.val.size(), 3u);
  EXPECT_DOUBLE_EQ(r.val[2].loss, 3.4);
  EXPECT_EQ(r.warnings.size(), 1u);
}

TEST(Runs, FindsRunFoldersAndSortsThem) {
  TempDir tmp;
  write_file(tmp.path() / "sweep" / "m" / "run.json", run_json("m", "moba"));
  write_file(tmp.path() / "sweep" / "f" / "run.json", run_json("f", "full"));
  write_file(tmp.path() / "sweep" / "f" / "metrics.jsonl", kMetrics);
  // A checkpoint folder is never a run, even with a stray run.json inside.
  write_file(tmp.path() / "sweep" / "f" / "checkpoint" / "run.json", "not json");
  write_file(tmp.path() / "notes.txt", "hello");
  const auto runs = read_runs(tmp.path());
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(runs[0].info.name, "f");  // full sorts before moba
  EXPECT_EQ(runs[1].info.name, "m");
  EXPECT_FALSE(runs[1].warnings.empty());  // no metrics yet
  EXPECT_EQ(read_runs(tmp.path() / "sweep" / "f").size(), 1u);  // a run folder itself
  std::filesystem::create_directories(tmp.path() / "empty");
  expect_error([&] { read_runs(tmp.path() / "empty"); }, "no run folders");
  expect_error([&] { read_runs(tmp.path() / "missing"); }, "does not exist");
}

TEST(Runs, DisagreeingBucketSizesAreAnError) {
  TempDir tmp;
  write_file(tmp.path() / "a" / "run.json", run_json("a", "moba"));
  write_file(tmp.path() / "a" / "metrics.jsonl", kMetrics);
  std::string other = kMetrics;
  for (size_t p; (p = other.find("2048")) != std::string::npos;) other.replace(p, 4, "1024");
  write_file(tmp.path() / "b" / "run.json", run_json("b", "full"));
  write_file(tmp.path() / "b" / "metrics.jsonl", other);
  const auto runs = read_runs(tmp.path());
  expect_error([&] { common_bucket_size(runs); }, "runs disagree on bucket_size");
}

TEST(Runs, WrittenLinesReadBack) {
  TempDir tmp;
  RunInfo info;
  info.name = "w";
  info.attention = "full";
  info.status = "finished";
  info.layers = info.heads = 2;
  info.width = 128;
  info.seq_len = 1024;
  info.params_non_embedding = 393216;
  info.tokens_planned = 1e6;
  write_run_json(tmp.path() / "w", info);
  ValPoint p;
  p.step = 5;
  p.tokens = 1000;
  p.flops_6nd = 2.0;
  p.flops_exec = 3.0;
  p.loss = 2.5;
  p.bucket_size = 512;
  p.bucket_losses = {2.6, kNaN};
  write_file(tmp.path() / "w" / "metrics.jsonl", val_line(p) + "\n");
  const scaling::Run r = read_run(tmp.path() / "w");
  ASSERT_EQ(r.val.size(), 1u);
  EXPECT_DOUBLE_EQ(r.val[0].loss, 2.5);
  EXPECT_TRUE(std::isnan(r.val[0].bucket_losses[1]));
  EXPECT_TRUE(std::isnan(r.val[0].trailing_loss));
}

}  // namespace
}  // namespace moba::scaling
