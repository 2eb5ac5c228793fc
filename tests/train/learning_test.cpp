// A tiny model learns a long-range task on the CPU: associative recall across blocks
// (train/synthetic.h), with full attention and with MoBA. The answer to a query sits in
// the first half of the window, several MoBA blocks back; a model that cannot retrieve it
// has a loss of at least log(4) = 1.39 nats on the answers (an untrained one: log(32)).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>

#include "run_dir.h"
#include "train/config.h"
#include "train/synthetic.h"
#include "train/trainer.h"

namespace moba::train {
namespace {

RunConfig recall_config(const std::string& kind, int64_t steps) {
  return parse_config(R"(
name = "recall"
data = "synthetic:assoc_recall"
[model]
vocab_size = 32        # 4 keys, 4 values, 16 pair tokens, 8 fillers
width = 128            # 8 heads: with 4 (width 64) the recall circuit appears
layers = 2             # after a plateau whose length varies from seed to seed
heads = 8
kv_heads = 4
mlp_multiple_of = 32
seq_len = 64
[attention]
kind = ")" + kind + R"("
block_size = 8         # 8 blocks: pairs in blocks 0-3, queries in 4-7
top_k = 3              # a query sees its block and 2 of the past ones
[train]
batch_size = 16
steps = )" + std::to_string(steps) +
                          R"(
lr = 3e-3
warmup_steps = 100
[eval]
windows = 64
batch_size = 16
)",
                      "recall.toml");
}

// Mean loss on the answers (the values of the queries) of the validation windows.
double recall_loss(Trainer& t) {
  const RunConfig& c = t.config();
  const AssocRecallSource src(c.model.vocab_size, c.model.seq_len, 1, 1, 0);
  const std::vector<uint8_t> mask = src.recall_mask();
  const std::vector<double>& pos = t.last_eval().position_losses;
  double sum = 0.0;
  int n = 0;
  for (size_t i = 0; i < mask.size(); ++i)
    if (mask[i]) {
      sum += pos[i];
      ++n;
    }
  return sum / n;
}

void learns(const std::string& kind, int64_t steps, double threshold) {
  testing::TempDir dir;
  Trainer t(recall_config(kind, steps), {dir / "run", "", false, nullptr});
  t.run();
  const double loss = recall_loss(t);
  std::printf(
      "%s attention, %lld steps: loss on the recalled values %.3f nats (no recall: "
      ">= %.3f), validation loss %.3f\n",
      kind.c_str(), static_cast<long long>(steps), loss, std::log(4.0), t.last_eval().loss);
  EXPECT_LT(loss, threshold);
}

TEST(Learning, FullAttentionRecallsAcrossBlocks) { learns("full", 500, 0.3); }
TEST(Learning, MobaRecallsAcrossBlocks) { learns("moba", 1000, 0.3); }

}  // namespace
}  // namespace moba::train
