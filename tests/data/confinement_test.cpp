// A data folder's files are read only where the folder says and only when they are regular
// files (issue 15, findings 7 and 11): a manifest naming "../x" or "/etc/shadow", a FIFO in
// place of an index or a shard, a manifest.json that is a folder: each is a named error,
// and none blocks.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"
#include "data/dataset.h"
#include "data/prepare.h"
#include "data/tokenizer.h"
#include "data_fixtures.h"

namespace moba::data {
namespace {

namespace fs = std::filesystem;

std::string open_error(const std::string& dir) {
  try {
    Dataset::open(dir);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

class Confinement : public ::testing::Test {
 protected:
  void SetUp() override {
    std::mt19937_64 g(5);
    for (int i = 0; i < 4; ++i)
      test::write_file(dir_.path() / "in" / ("d" + std::to_string(i)), test::random_text(g, 2000));
    PrepareConfig c;
    c.inputs = {dir_.str("in")};
    c.out_dir = dir_.str("out");
    c.tokenizer = "byte";
    c.val_fraction = 0;
    c.progress = false;
    prepare(c, nullptr);
    manifest_ = nlohmann::json::parse(test::read_file(dir_.path() / "out/manifest.json"));
    // A hang would be the bug: fail the test instead of blocking ctest.
    ::alarm(60);
  }
  void TearDown() override { ::alarm(0); }
  void set_shard(const std::string& key, const std::string& name) {
    nlohmann::json m = manifest_;
    m["shards"][0][key] = name;
    test::write_file(dir_.path() / "out/manifest.json", m.dump());
  }
  test::TempDir dir_;
  nlohmann::json manifest_;
};

TEST_F(Confinement, ShardNamesLeavingTheFolderAreRefused) {
  ASSERT_EQ(open_error(dir_.str("out")), "");
  test::write_file(dir_.path() / "x.bin", test::read_file(dir_.path() / "out/train-00000.bin"));
  set_shard("bin", "../x.bin");
  EXPECT_NE(open_error(dir_.str("out")).find("file name '../x.bin' leaves its folder"),
            std::string::npos);
  set_shard("bin", "/etc/shadow");
  EXPECT_NE(open_error(dir_.str("out")).find("'/etc/shadow' must be a name relative to its folder"),
            std::string::npos);
  set_shard("bin", "train-00000.bin");
  set_shard("index", "sub/../../x.idx");
  EXPECT_NE(open_error(dir_.str("out")).find("leaves its folder"), std::string::npos);
}

TEST_F(Confinement, AFifoAsIndexOrShardIsRefusedWithoutBlocking) {
  const fs::path idx = dir_.path() / "out/train-00000.idx";
  fs::remove(idx);
  ASSERT_EQ(::mkfifo(idx.c_str(), 0600), 0);
  EXPECT_NE(open_error(dir_.str("out")).find("document index must be a regular file, this is a FIFO"),
            std::string::npos);
  const fs::path bin = dir_.path() / "out/train-00000.bin";
  fs::remove(bin);
  ASSERT_EQ(::mkfifo(bin.c_str(), 0600), 0);
  EXPECT_NE(open_error(dir_.str("out")).find("shard must be a regular file"), std::string::npos);
}

TEST_F(Confinement, AManifestThatIsAFolderIsANamedError) {
  fs::remove(dir_.path() / "out/manifest.json");
  fs::create_directories(dir_.path() / "out/manifest.json");
  EXPECT_NE(open_error(dir_.str("out")).find("manifest.json: manifest must be a regular file, "
                                             "this is a folder"),
            std::string::npos);
  EXPECT_THROW(Tokenizer::open(dir_.str("out")), Error);
}

}  // namespace
}  // namespace moba::data
