// The loader: batches are a function of (seed, step); document-mode rows lie inside one
// long-enough training document; packed rows carry the document boundaries; validation
// windows are fixed and come from validation documents; bad data is an error naming the
// file. Byte-level data, so every token is a byte of a generated document.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>

#include "data/dataset.h"
#include "data/prepare.h"
#include "data_fixtures.h"

namespace moba::data {
namespace {

class DatasetTest : public ::testing::Test {
 protected:
  // A corpus of documents of 50..6000 bytes, about a third in validation.
  static void SetUpTestSuite() {
    seed_ = test::fresh_seed();
    std::mt19937_64 g(seed_);
    dir_ = new test::TempDir;
    for (int i = 0; i < 40; ++i)
      test::write_file(dir_->path() / "in" / ("doc" + std::to_string(i) + ".txt"),
                       test::random_text(g, 50 + g() % 6000));
    PrepareConfig c;
    c.inputs = {dir_->str("in")};
    c.out_dir = dir_->str("out");
    c.tokenizer = "byte";
    c.val_fraction = 0.3;
    c.shard_tokens = 20000;  // several shards per split
    c.progress = false;
    prepare(c, nullptr);
  }
  static void TearDownTestSuite() { delete dir_; }
  void SetUp() override {
    ds_ = Dataset::open(dir_->str("out"));
    for (int s = 0; s < 2; ++s)
      for (int64_t i = 0; i < ds_.documents(Split(s)); ++i) {
        docs_[s].push_back(ds_.document(Split(s), i));
        starts_[s].push_back(static_cast<int64_t>(stream_[s].size()));
        stream_[s].insert(stream_[s].end(), docs_[s].back().begin(), docs_[s].back().end());
      }
  }
  std::vector<int32_t> row(const Batch& b, int64_t r) const {
    return {b.row(r), b.row(r) + b.T + 1};
  }
  // Position of `w` inside `hay`, or -1 (windows of >= 64 random bytes are unique).
  static int64_t find(const std::vector<int32_t>& hay, const std::vector<int32_t>& w) {
    const auto it = std::search(hay.begin(), hay.end(), w.begin(), w.end());
    return it == hay.end() ? -1 : it - hay.begin();
  }
  // Checks cu_seqlens, loss_mask and single_document of row r found at stream position p.
  void expect_boundaries(const Batch& b, int64_t r, int s, int64_t p) const {
    const auto& st = starts_[s];
    auto doc_at = [&](int64_t q) { return std::upper_bound(st.begin(), st.end(), q) - st.begin() - 1; };
    std::vector<int64_t> want;  // boundaries inside row r, as cu_seqlens entries
    for (int64_t t = 1; t < b.T; ++t)
      if (doc_at(p + t) != doc_at(p + t - 1)) want.push_back(r * b.T + t);
    want.push_back((r + 1) * b.T);
    std::vector<int64_t> got;
    for (int64_t c : b.cu_seqlens)
      if (c > r * b.T && c <= (r + 1) * b.T) got.push_back(c);
    EXPECT_EQ(got, want) << "row " << r;
    for (int64_t t = 0; t < b.T; ++t)
      EXPECT_EQ(b.loss_mask[r * b.T + t], doc_at(p + t) == doc_at(p + t + 1)) << "row " << r << " t " << t;
    EXPECT_EQ(b.single_document[r], doc_at(p) == doc_at(p + b.T)) << "row " << r;
  }

  static inline uint64_t seed_ = 0;
  static inline test::TempDir* dir_ = nullptr;
  Dataset ds_;
  std::vector<std::vector<int32_t>> docs_[2];
  std::vector<int32_t> stream_[2];
  std::vector<int64_t> starts_[2];
};

TEST_F(DatasetTest, TrainBatchIsAFunctionOfSeedAndStep) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const Dataset other = Dataset::open(dir_->str("out"));  // as a resumed run would
  for (Packing mode : {Packing::document, Packing::packed}) {
    const Batch a = ds_.train_batch(7, 123, 8, 100, mode);
    const Batch b = other.train_batch(7, 123, 8, 100, mode);
    EXPECT_EQ(a.tokens, b.tokens);
    EXPECT_EQ(a.cu_seqlens, b.cu_seqlens);
    EXPECT_EQ(a.loss_mask, b.loss_mask);
    EXPECT_NE(a.tokens, ds_.train_batch(7, 124, 8, 100, mode).tokens);
    EXPECT_NE(a.tokens, ds_.train_batch(8, 123, 8, 100, mode).tokens);
    // Row b depends on (seed, step, b) only, not on B.
    const Batch c = ds_.train_batch(7, 123, 3, 100, mode);
    EXPECT_TRUE(std::equal(c.tokens.begin(), c.tokens.end(), a.tokens.begin()));
  }
}

TEST_F(DatasetTest, DocumentRowsLieInsideOneLongEnoughTrainingDocument) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const int64_t T = 1000, B = 16;
  int64_t near_end = 0;
  for (int64_t step = 0; step < 40; ++step) {
    const Batch b = ds_.train_batch(1, step, B, T, Packing::document);
    ASSERT_EQ(b.tokens.size(), static_cast<size_t>(B * (T + 1)));
    std::vector<int64_t> fixed{0};
    for (int64_t r = 0; r < B; ++r) fixed.push_back((r + 1) * T);
    EXPECT_EQ(b.cu_seqlens, fixed);
    EXPECT_TRUE(std::all_of(b.loss_mask.begin(), b.loss_mask.end(), [](uint8_t m) { return m == 1; }));
    for (int64_t r = 0; r < B; ++r) {
      EXPECT_EQ(b.single_document[r], 1);
      const auto w = row(b, r);
      bool inside = false;
      for (const auto& d : docs_[0]) {
        const int64_t at = find(d, w);
        if (at < 0) continue;
        inside = true;
        EXPECT_GE(static_cast<int64_t>(d.size()), T + 1);
        near_end += at + T + 1 > static_cast<int64_t>(d.size()) - 200;
      }
      EXPECT_TRUE(inside) << "step " << step << " row " << r << " is not inside a training document";
    }
  }
  EXPECT_GT(near_end, 0) << "no window ever came near a document's end: starts are not uniform";
}

TEST_F(DatasetTest, PackedRowsCarryDocumentBoundaries) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const int64_t T = 3000, B = 6;
  int64_t boundaries = 0;
  for (int64_t step = 0; step < 10; ++step) {
    const Batch b = ds_.train_batch(3, step, B, T, Packing::packed);
    ASSERT_EQ(b.cu_seqlens.front(), 0);
    ASSERT_EQ(b.cu_seqlens.back(), B * T);
    EXPECT_TRUE(std::is_sorted(b.cu_seqlens.begin(), b.cu_seqlens.end()));
    EXPECT_EQ(std::adjacent_find(b.cu_seqlens.begin(), b.cu_seqlens.end()), b.cu_seqlens.end());
    boundaries += static_cast<int64_t>(b.cu_seqlens.size()) - 1 - B;
    for (int64_t r = 0; r < B; ++r) {
      const int64_t p = find(stream_[0], row(b, r));
      ASSERT_GE(p, 0) << "row " << r << " is not a slice of the training stream";
      expect_boundaries(b, r, 0, p);
    }
  }
  EXPECT_GT(boundaries, 0) << "T = 3000 over documents of <= 6000 bytes never crossed one";
}

TEST_F(DatasetTest, ValidationWindowsAreFixedAndFromValidationDocuments) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const int64_t T = 500;
  int64_t available = 0;  // single-document windows at multiples of T + 1
  for (const auto& d : docs_[1]) available += static_cast<int64_t>(d.size()) / (T + 1);
  ASSERT_GT(available, 0);
  for (int64_t count : {int64_t{1}, available, available + 5}) {
    const Batch a = ds_.validation_windows(T, count);
    const Batch b = Dataset::open(dir_->str("out")).validation_windows(T, count);
    EXPECT_EQ(a.tokens, b.tokens);
    ASSERT_EQ(a.B, count);
    for (int64_t r = 0; r < count; ++r) {
      const int64_t p = find(stream_[1], row(a, r));
      ASSERT_GE(p, 0) << "window " << r << " is not validation data";
      // The first `available` windows are the single-document ones; the rest, cut from the
      // stream, carry their true flag (checked by expect_boundaries).
      if (r < available) {  // starts at a multiple of T + 1 within its document
        EXPECT_EQ(a.single_document[r], 1) << "window " << r;
        const auto& st = starts_[1];
        const int64_t d = std::upper_bound(st.begin(), st.end(), p) - st.begin() - 1;
        EXPECT_EQ((p - st[d]) % (T + 1), 0);
      }
      expect_boundaries(a, r, 1, p);
    }
  }
}

TEST_F(DatasetTest, ErrorsSayWhatToChange) {
  try {
    ds_.train_batch(0, 0, 1, 100000, Packing::document);
    ADD_FAILURE() << "T longer than every document accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no training document holds"), std::string::npos) << e.what();
  }
  EXPECT_THROW(ds_.train_batch(0, 0, 1, 10000000, Packing::packed), Error);
  EXPECT_THROW(ds_.validation_windows(10000000, 2), Error);
  EXPECT_THROW(ds_.train_batch(0, 0, 0, 10, Packing::packed), Error);
  ds_.check_vocab(256);
  try {
    ds_.check_vocab(200);
    ADD_FAILURE() << "vocabulary 256 accepted for a model of 200";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("manifest.json"), std::string::npos) << e.what();
  }
  EXPECT_THROW(Dataset::open(dir_->str("out"), {true, 100}), Error);
  EXPECT_THROW(packing_from_string("long"), Error);
  EXPECT_EQ(packing_from_string("packed"), Packing::packed);
}

TEST(DatasetFiles, CorruptOrTruncatedShardIsAnErrorNamingTheFile) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 g(seed);
  test::TempDir dir;
  for (int i = 0; i < 6; ++i)
    test::write_file(dir.path() / "in" / ("d" + std::to_string(i)), test::random_text(g, 3000));
  PrepareConfig c;
  c.inputs = {dir.str("in")};
  c.out_dir = dir.str("out");
  c.tokenizer = "byte";
  c.val_fraction = 0;
  c.progress = false;
  prepare(c, nullptr);
  const auto bin = dir.path() / "out" / "train-00000.bin";
  const std::string good = test::read_file(bin);
  std::string bad = good;
  bad[kHeaderBytes + g() % (good.size() - kHeaderBytes)] ^= 0x01;  // any byte, any id
  test::write_file(bin, bad);
  for (bool verify : {true}) {
    try {
      Dataset::open(dir.str("out"), {verify, 0});
      ADD_FAILURE() << "corrupt shard opened";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("train-00000.bin"), std::string::npos) << e.what();
    }
  }
  test::write_file(bin, good.substr(0, good.size() / 2));
  try {
    Dataset::open(dir.str("out"), {false, 0});  // even without verification
    ADD_FAILURE() << "truncated shard opened";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("train-00000.bin"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos) << e.what();
  }
  std::filesystem::remove(dir.path() / "out" / "manifest.json");
  EXPECT_THROW(Dataset::open(dir.str("out")), Error);
}

}  // namespace
}  // namespace moba::data
