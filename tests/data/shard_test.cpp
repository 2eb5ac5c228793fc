// Shards and indexes: round trip of random ids, and every corruption is an error naming
// the file: a flipped byte (checksum), a truncated or extended file, a bad header.
#include <gtest/gtest.h>

#include <filesystem>
#include <random>
#include <string>

#include "data/shard.h"
#include "data_fixtures.h"

namespace moba::data {
namespace {

struct Written {
  std::vector<std::vector<int32_t>> docs;
  std::string bin, idx;
};

Written write_random(const test::TempDir& dir, std::mt19937_64& g, int dtype, int64_t vocab) {
  Written w{{}, dir.str("train-00000.bin"), dir.str("train-00000.idx")};
  ShardWriter sw(w.bin, w.idx, dtype, vocab);
  const int n = 1 + static_cast<int>(g() % 20);
  for (int d = 0; d < n; ++d) {
    std::vector<int32_t> ids(1 + g() % 500);
    for (auto& id : ids) id = static_cast<int32_t>(g() % static_cast<uint64_t>(vocab));
    sw.add_document(ids);
    w.docs.push_back(ids);
  }
  sw.finish();
  return w;
}

void expect_error_naming(const std::function<void()>& fn, const std::string& file,
                         const std::string& what) {
  try {
    fn();
    ADD_FAILURE() << "expected an error about " << what;
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find(file), std::string::npos) << "'" << m << "' does not name " << file;
    EXPECT_NE(m.find(what), std::string::npos) << "'" << m << "' does not say " << what;
  }
}

TEST(Shard, RoundTripUint16AndUint32) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 g(seed);
  for (auto [dtype, vocab] : {std::pair{2, int64_t{65536}}, std::pair{4, int64_t{200000}},
                              std::pair{2, int64_t{256}}}) {
    test::TempDir dir;
    const Written w = write_random(dir, g, dtype, vocab);
    const MappedShard s = MappedShard::open(w.bin, w.idx, true);
    EXPECT_EQ(s.dtype_bytes(), dtype);
    EXPECT_EQ(s.vocab_size(), vocab);
    ASSERT_EQ(s.offsets().size(), w.docs.size() + 1);
    EXPECT_EQ(std::filesystem::file_size(w.bin), kHeaderBytes + s.tokens() * dtype);
    for (size_t d = 0; d < w.docs.size(); ++d) {
      std::vector<int32_t> got(s.offsets()[d + 1] - s.offsets()[d]);
      s.read(static_cast<int64_t>(s.offsets()[d]), got);
      EXPECT_EQ(got, w.docs[d]) << "document " << d;
    }
  }
}

TEST(Shard, FlippedByteIsAChecksumErrorNamingTheFile) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 g(seed);
  test::TempDir dir;
  const Written w = write_random(dir, g, 2, 1000);
  const std::string good = test::read_file(w.bin);
  // Bit 0 of an id's low byte: the id stays below 1000, so only the checksum can tell.
  std::string bad = good;
  const size_t at = kHeaderBytes + 2 * (g() % ((good.size() - kHeaderBytes) / 2));
  bad[at] = static_cast<char>(bad[at] ^ 1);
  test::write_file(w.bin, bad);
  expect_error_naming([&] { MappedShard::open(w.bin, w.idx, true); }, w.bin, "checksum mismatch");
  // The header's vocabulary size (a field no size check covers).
  bad = good;
  bad[16] = static_cast<char>(bad[16] ^ 4);
  test::write_file(w.bin, bad);
  expect_error_naming([&] { MappedShard::open(w.bin, w.idx, true); }, w.bin, "checksum mismatch");
  // The magic.
  bad = good;
  bad[0] = 'X';
  test::write_file(w.bin, bad);
  expect_error_naming([&] { MappedShard::open(w.bin, w.idx, false); }, w.bin, "bad magic");
  // An index byte.
  test::write_file(w.bin, good);
  std::string idx = test::read_file(w.idx);
  idx[kHeaderBytes + 8 + g() % (idx.size() - kHeaderBytes - 8)] ^= 0x10;
  test::write_file(w.idx, idx);
  expect_error_naming([&] { MappedShard::open(w.bin, w.idx, false); }, w.idx, "checksum mismatch");
}

TEST(Shard, TruncatedOrExtendedFileIsAnErrorNamingTheFile) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 g(seed);
  test::TempDir dir;
  const Written w = write_random(dir, g, 4, 5000);
  const std::string good = test::read_file(w.bin);
  test::write_file(w.bin, good.substr(0, good.size() - 1 - g() % 3));
  expect_error_naming([&] { MappedShard::open(w.bin, w.idx, false); }, w.bin, "truncated");
  test::write_file(w.bin, good.substr(0, 10));
  expect_error_naming([&] { MappedShard::open(w.bin, w.idx, false); }, w.bin, "truncated");
  test::write_file(w.bin, good + "xx");
  expect_error_naming([&] { MappedShard::open(w.bin, w.idx, false); }, w.bin, "longer");
  test::write_file(w.bin, good);
  const std::string idx = test::read_file(w.idx);
  test::write_file(w.idx, idx.substr(0, idx.size() - 8));
  expect_error_naming([&] { MappedShard::open(w.bin, w.idx, false); }, w.idx, "truncated");
  std::filesystem::remove(w.idx);
  expect_error_naming([&] { MappedShard::open(w.bin, w.idx, false); }, w.idx, "cannot open");
}

TEST(Shard, IdOutsideVocabularyIsRejectedOnWriteAndRead) {
  test::TempDir dir;
  ShardWriter sw(dir.str("a.bin"), dir.str("a.idx"), 2, 100);
  EXPECT_THROW(sw.add_document(std::vector<int32_t>{5, 100}), Error);
  EXPECT_THROW(ShardWriter(dir.str("b.bin"), dir.str("b.idx"), 2, 70000), Error);
}

}  // namespace
}  // namespace moba::data
