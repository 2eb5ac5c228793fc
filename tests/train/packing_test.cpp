// Packed rows in the trainer (data_packing = "packed"): the shard source's cu_seqlens and
// loss_mask cut and mask exactly at document ends, a short packed run resumes bit for bit,
// and a batch whose mask keeps no position stops the run with an error naming the step.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/prepare.h"
#include "train/config.h"
#include "train/shard_source.h"
#include "train/trainer.h"
#include "train/run_dir.h"
#include "json_lines.h"

namespace moba::train {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;
using testing::read_lines;
using testing::message_of;

// Byte-level shards of short documents, each one line of letters: "\n" occurs only as a
// document's last token (prepare ends every document with one), so in a packed row the
// target t + 1 starts another document exactly when input t is "\n".
std::string make_short_doc_shards(const TempDir& dir) {
  std::mt19937_64 g(11);
  for (int d = 0; d < 60; ++d) {
    std::string text(3 + g() % 30, 'a');
    for (char& ch : text) ch = static_cast<char>('a' + g() % 26);
    const fs::path p = fs::path(dir / "docs") / ("doc" + std::to_string(d) + ".txt");
    fs::create_directories(p.parent_path());
    std::ofstream(p) << text << "\n";
  }
  data::PrepareConfig pc;
  pc.inputs = {dir / "docs"};
  pc.out_dir = dir / "shards";
  pc.tokenizer = "byte";
  pc.val_fraction = 0.2;
  pc.threads = 1;
  pc.progress = false;
  data::prepare(pc, nullptr);
  return pc.out_dir;
}

TEST(PackedShards, MaskAndBoundariesFallExactlyAtDocumentEnds) {
  TempDir dir;
  const std::string shards = make_short_doc_shards(dir);
  const int64_t B = 3, T = 32;
  ShardSource packed(shards, 256, T, B, 4, 7, data::Packing::packed);
  ShardSource again(shards, 256, T, B, 4, 7, data::Packing::packed);
  int64_t masked = 0;
  for (uint64_t i = 0; i < 20; ++i) {
    const model::Batch b = packed.train_batch(i);
    ASSERT_EQ(b.B, B);
    ASSERT_EQ(b.T, T);
    ASSERT_NO_THROW(b.validate(256));
    ASSERT_EQ(b.loss_mask.size(), static_cast<size_t>(B * T));
    std::vector<int64_t> cu = {0};
    for (int64_t r = 0; r < B; ++r) {
      const int32_t* row = b.tokens.data() + r * (T + 1);
      for (int64_t t = 0; t < T; ++t) {
        // Cross-document target <=> the input ends its document.
        EXPECT_EQ(b.loss_mask[r * T + t], row[t] == '\n' ? 0 : 1) << "batch " << i << " row " << r
                                                                  << " position " << t;
        masked += row[t] == '\n';
        if (t > 0 && row[t - 1] == '\n') cu.push_back(r * T + t);
      }
      cu.push_back((r + 1) * T);
    }
    EXPECT_EQ(b.cu_seqlens, cu) << "batch " << i << ": a sequence starts after every document end";
    EXPECT_EQ(b.tokens, again.train_batch(i).tokens) << "a pure function of (seed, index)";
    EXPECT_EQ(b.loss_mask, again.train_batch(i).loss_mask);
  }
  EXPECT_GT(masked, 20) << "documents of at most 33 tokens: rows of 33 must cross them";
  EXPECT_NE(packed.describe().find("packed rows"), std::string::npos) << packed.describe();

  // Document mode is unchanged: no boundaries, no mask. Its validation windows are the
  // packed source's.
  ShardSource doc(shards, 256, 16, B, 4, 7, data::Packing::document);
  const model::Batch d = doc.train_batch(0);
  EXPECT_TRUE(d.cu_seqlens.empty());
  EXPECT_TRUE(d.loss_mask.empty());
  ShardSource packed16(shards, 256, 16, B, 4, 7, data::Packing::packed);
  const std::vector<Window> va = doc.validation(), vb = packed16.validation();
  ASSERT_EQ(va.size(), vb.size());
  for (size_t w = 0; w < va.size(); ++w) {
    EXPECT_EQ(va[w].tokens, vb[w].tokens);
    EXPECT_EQ(va[w].single_document, vb[w].single_document);
  }
  // Documents shorter than T + 1 (at most 33 tokens here) serve packed rows, not
  // document windows.
  EXPECT_NO_THROW(ShardSource(shards, 256, 64, B, 4, 7, data::Packing::packed));
  EXPECT_NE(message_of([&] { ShardSource(shards, 256, 64, B, 4, 7, data::Packing::document); })
                .find("data_packing = \"packed\""),
            std::string::npos);
}

RunConfig packed_config(const std::string& shards) {
  return parse_config("data = \"" + shards + R"("
data_packing = "packed"
name = "packed"
[model]
vocab_size = 256
width = 16
layers = 2
heads = 2
mlp_multiple_of = 16
seq_len = 32
[attention]
kind = "moba"
block_size = 8
top_k = 2
[train]
batch_size = 2
grad_accum = 2
steps = 8
lr = 1e-2
warmup_steps = 2
[eval]
every = 4
windows = 3
batch_size = 3
[checkpoint]
every = 3
)",
                      "packed.toml");
}

TEST(PackedShards, TrainingRunResumesBitExactly) {
  TempDir dir;
  const RunConfig cfg = packed_config(make_short_doc_shards(dir));
  Trainer whole(cfg, {dir / "whole", "", false, nullptr});
  whole.run();
  {
    Trainer first(cfg, {dir / "split", "", false, nullptr});
    first.run(5);  // the checkpoint holds step 3
  }
  Trainer rest(cfg, {dir / "split", "", true, nullptr});
  EXPECT_EQ(rest.state().step, 3);
  rest.run();
  const auto a = read_lines(dir / "whole/metrics.jsonl"),
             b = read_lines(dir / "split/metrics.jsonl");
  ASSERT_EQ(a.size(), b.size());
  ASSERT_EQ(a.size(), 8u + 2u) << "8 steps, validations at 4 and 8";
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i]["step"], b[i]["step"]) << "line " << i;
    EXPECT_TRUE(std::isfinite(a[i]["loss"].get<double>())) << "line " << i;
    EXPECT_EQ(a[i]["loss"].get<double>(), b[i]["loss"].get<double>()) << "line " << i;
    if (a[i]["kind"] == "train") {
      EXPECT_EQ(a[i]["grad_norm"].get<double>(), b[i]["grad_norm"].get<double>()) << "line " << i;
    }
  }
  const auto pa = whole.params(), pb = rest.params();
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i) ASSERT_EQ(pa[i], pb[i]) << "parameter " << i;
  std::ifstream f(dir / "whole/config.toml");
  const std::string saved((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  EXPECT_NE(saved.find("data_packing = \"packed\""), std::string::npos) << saved;
}

// A source whose every target is masked out (as a packed row of one-token documents
// would be).
class AllMaskedSource : public BatchSource {
 public:
  model::Batch train_batch(uint64_t) override {
    model::Batch b;
    b.B = 1;
    b.T = 8;
    b.tokens.assign(9, 1);
    b.loss_mask.assign(8, 0);
    return b;
  }
  std::vector<Window> validation() override { return {Window{std::vector<int32_t>(9, 1), true}}; }
  std::string describe() const override { return "all masked"; }
};

TEST(PackedShards, BatchWithNoCountedPositionStopsTheRun) {
  TempDir dir;
  const RunConfig cfg = parse_config(R"(
[model]
vocab_size = 8
width = 8
layers = 1
heads = 2
mlp_multiple_of = 8
seq_len = 8
[attention]
kind = "full"
[train]
batch_size = 1
steps = 2
)",
                                     "masked.toml");
  Trainer t(cfg, {dir / "run", "", false, nullptr}, std::make_unique<AllMaskedSource>());
  const std::string m = message_of([&] { t.run(); });
  EXPECT_NE(m.find("step 1: "), std::string::npos) << m;
  EXPECT_NE(m.find("loss_mask is all zeros"), std::string::npos) << m;
  EXPECT_EQ(t.state().step, 0) << "no update from a batch without loss";
}

TEST(PackedShards, SyntheticDataTakesDocumentRowsOnly) {
  TempDir dir;
  RunConfig cfg = packed_config(make_short_doc_shards(dir));
  // --data naming a synthetic source over a packed configuration.
  const std::string m =
      message_of([&] { Trainer(cfg, {dir / "run", "synthetic:assoc_recall", false, nullptr}); });
  EXPECT_NE(m.find("applies to token shards"), std::string::npos) << m;
}

}  // namespace
}  // namespace moba::train
