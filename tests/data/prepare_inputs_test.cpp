// Inputs that prepare once handled badly (issue 15, finding 11): a file name that is not
// valid UTF-8 failed at the very end as an internal error; --vocab-size larger than the
// text supports gave a smaller vocabulary without a word.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"
#include "data/prepare.h"
#include "data/tokenizer.h"
#include "data_fixtures.h"

namespace moba::data {
namespace {

namespace fs = std::filesystem;

PrepareConfig config(const test::TempDir& dir) {
  PrepareConfig c;
  c.inputs = {dir.str("in")};
  c.out_dir = dir.str("out");
  c.tokenizer = "byte";
  c.val_fraction = 0;
  c.threads = 1;
  c.progress = false;
  return c;
}

TEST(PrepareInputs, AFileNameThatIsNotUtf8IsANamedErrorAndLeavesNoOutput) {
  test::TempDir dir;
  std::mt19937_64 g(1);
  test::write_file(dir.path() / "in" / "good.txt", test::random_text(g, 3000));
  test::write_file(dir.path() / "in" / "bad-\xff\xfe.txt", test::random_text(g, 3000));
  try {
    prepare(config(dir), nullptr);
    ADD_FAILURE() << "a name that is not UTF-8 was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad-\xEF\xBF\xBD\xEF\xBF\xBD.txt' is not valid UTF-8"),
              std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(fs::exists(dir.path() / "out"));
  for (const auto& e : fs::directory_iterator(dir.path()))
    EXPECT_EQ(e.path().filename(), "in") << "left behind: " << e.path();
}

TEST(PrepareInputs, AVocabularySmallerThanAskedIsRecorded) {
  if (!have_sentencepiece()) GTEST_SKIP() << "built without SentencePiece";
  test::TempDir dir;
  std::mt19937_64 g(2);
  for (int i = 0; i < 4; ++i)
    test::write_file(dir.path() / "in" / ("d" + std::to_string(i)), test::random_text(g, 5000));
  PrepareConfig c = config(dir);
  c.tokenizer = "bpe";
  c.vocab_size = 100000;
  const nlohmann::json m = prepare(c, nullptr);
  const int64_t got = m["tokenizer"]["vocab_size"].get<int64_t>();
  EXPECT_LT(got, 100000);
  EXPECT_EQ(m["tokenizer"]["vocab_size_requested"], 100000);
  EXPECT_EQ(m["tokenizer"]["note"], "--vocab-size 100000 asked, the training text gave only " +
                                        std::to_string(got) + " pieces");
}

}  // namespace
}  // namespace moba::data
