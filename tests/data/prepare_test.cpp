// `prepare` end to end on small generated corpora: the manifest's statistics against
// counts made here, the split (deterministic, disjoint, near the stated fraction), the
// cleaning counters, and the errors for empty input.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <string>

#include "data/dataset.h"
#include "data/prepare.h"
#include "data/split.h"
#include "data/tokenizer.h"
#include "data_fixtures.h"

namespace moba::data {
namespace {

PrepareConfig byte_config(const test::TempDir& dir, double val_fraction = 0.25) {
  PrepareConfig c;
  c.inputs = {dir.str("in")};
  c.out_dir = dir.str("out");
  c.tokenizer = "byte";
  c.val_fraction = val_fraction;
  c.threads = 2;
  c.progress = false;
  return c;
}

TEST(Split, DeterministicAndNearTheStatedFraction) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 g(seed);
  const int n = 20000;
  int val = 0;
  for (int i = 0; i < n; ++i) {
    const std::string name = "book-" + std::to_string(g()) + ".txt";
    const Split s = split_of(name, 0.1);
    EXPECT_EQ(split_of(name, 0.1), s);
    EXPECT_TRUE(split_of(name, 0.0) == Split::train);
    if (s == Split::val) {
      EXPECT_EQ(split_of(name, 0.2), Split::val);  // monotone in the fraction
    }
    val += s == Split::val;
  }
  // Binomial(20000, 0.1): sd = 42; 6 sd is 255.
  EXPECT_NEAR(val, 0.1 * n, 255);
}

TEST(Prepare, StatisticsMatchTheGeneratedCorpus) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 g(seed);
  test::TempDir dir;
  // Documents of chosen lengths in bytes (= byte tokens after cleaning), some crossing
  // 4K, 8K and 32K; names in sub-folders.
  std::map<std::string, std::string> texts;
  const int n = 12 + static_cast<int>(g() % 10);
  for (int i = 0; i < n; ++i) {
    const size_t len = 100 + g() % 40000;
    std::string t = test::random_text(g, len);
    while (!t.empty() && std::isspace(static_cast<unsigned char>(t.back()))) t.pop_back();
    t += '\n';
    const std::string name = (i % 3 ? "sub/" : "") + std::string("doc") + std::to_string(i) + ".txt";
    texts[name] = t;
    test::write_file(dir.path() / "in" / name, t);
  }
  test::write_file(dir.path() / "in" / "image.png", std::string("\x89PNG\r\n\x1a\n\0\0", 10));
  test::write_file(dir.path() / "in" / "blank.txt", "\n \n");
  test::write_file(dir.path() / "in" / ".hidden", "never read");
  const nlohmann::json m = prepare(byte_config(dir, 0.3), nullptr);

  std::vector<int64_t> lens[2];
  for (const auto& [name, t] : texts)
    lens[static_cast<int>(split_of(name, 0.3))].push_back(static_cast<int64_t>(t.size()));
  const char* keys[2] = {"train", "val"};
  for (int s = 0; s < 2; ++s) {
    const auto& j = m["stats"][keys[s]];
    auto& v = lens[s];
    std::sort(v.begin(), v.end());
    ASSERT_EQ(j["documents"].get<size_t>(), v.size()) << keys[s];
    if (v.empty()) continue;
    int64_t sum = 0;
    for (auto x : v) sum += x;
    EXPECT_EQ(j["tokens"].get<int64_t>(), sum);
    EXPECT_EQ(j["bytes"].get<int64_t>(), sum);  // byte-level: one token per byte
    EXPECT_EQ(j["tokens_per_document"]["min"].get<int64_t>(), v.front());
    EXPECT_EQ(j["tokens_per_document"]["max"].get<int64_t>(), v.back());
    const double med = v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
    EXPECT_DOUBLE_EQ(j["tokens_per_document"]["median"].get<double>(), med);
    for (int64_t L : {4096, 8192, 32768})
      EXPECT_EQ(j["documents_reaching"][std::to_string(L)].get<int64_t>(),
                std::count_if(v.begin(), v.end(), [&](int64_t x) { return x >= L; }))
          << keys[s] << " reaching " << L;
  }
  EXPECT_EQ(m["input"]["files"].get<int>(), n + 2);
  EXPECT_EQ(m["input"]["skipped_binary"].get<int>(), 1);
  EXPECT_EQ(m["input"]["skipped_empty"].get<int>(), 1);
  EXPECT_EQ(m["stats"]["all"]["documents"].get<int>(), n);

  // Each document's tokens, read back through the loader, are its text.
  const Dataset ds = Dataset::open(dir.str("out"));
  const auto tok = Tokenizer::open(dir.str("out"));
  EXPECT_EQ(ds.tokens(Split::train) + ds.tokens(Split::val), m["stats"]["all"]["tokens"].get<int64_t>());
  std::set<std::string> seen;
  for (const auto& d : m["documents"]) {
    const std::string name = d["name"];
    EXPECT_TRUE(seen.insert(name).second) << name << " written twice";
    EXPECT_EQ(d["split"], split_name(split_of(name, 0.3))) << name;
  }
  EXPECT_EQ(seen.size(), texts.size());
}

TEST(Prepare, SameInputSameShardsAndMovingTheFolderKeepsTheSplit) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 g(seed);
  test::TempDir dir;
  for (int i = 0; i < 30; ++i)
    test::write_file(dir.path() / "in" / ("d" + std::to_string(g() % 100000) + ".txt"),
                     test::random_text(g, 50 + g() % 3000));
  PrepareConfig c = byte_config(dir);
  const nlohmann::json a = prepare(c, nullptr);
  std::filesystem::rename(dir.path() / "in", dir.path() / "moved");
  c.inputs = {dir.str("moved")};
  c.out_dir = dir.str("out2");
  c.threads = 1;  // a different thread count must not change the output
  const nlohmann::json b = prepare(c, nullptr);
  EXPECT_EQ(a["documents"], b["documents"]);
  for (const auto& sh : a["shards"]) {
    EXPECT_EQ(test::read_file(dir.path() / "out" / sh["bin"].get<std::string>()),
              test::read_file(dir.path() / "out2" / sh["bin"].get<std::string>()));
  }
  std::set<std::string> train, val;
  for (const auto& d : a["documents"]) (d["split"] == "val" ? val : train).insert(d["name"]);
  for (const auto& name : val) EXPECT_EQ(train.count(name), 0u) << name << " is in both splits";
  EXPECT_EQ(train.size() + val.size(), a["documents"].size());
}

TEST(Prepare, EmptyInputIsAnError) {
  test::TempDir dir;
  std::filesystem::create_directories(dir.path() / "in");
  EXPECT_THROW(prepare(byte_config(dir), nullptr), Error);  // no file at all
  test::write_file(dir.path() / "in" / "a.txt", "   \n\n");
  test::write_file(dir.path() / "in" / "b.bin", std::string("\0\1\2", 3));
  try {
    prepare(byte_config(dir), nullptr);
    ADD_FAILURE() << "no text document, yet prepare succeeded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no text documents"), std::string::npos) << e.what();
  }
  PrepareConfig c = byte_config(dir);
  c.inputs = {dir.str("does-not-exist")};
  EXPECT_THROW(prepare(c, nullptr), Error);
}

TEST(Prepare, RefusesToWriteIntoAForeignFolder) {
  test::TempDir dir;
  test::write_file(dir.path() / "in" / "a.txt", "some text\n");
  test::write_file(dir.path() / "out" / "precious.txt", "keep me");
  EXPECT_THROW(prepare(byte_config(dir), nullptr), Error);
  EXPECT_TRUE(std::filesystem::exists(dir.path() / "out" / "precious.txt"));
  // Beside an earlier output of ours, too: the whole folder is replaced, so it is refused.
  std::filesystem::remove(dir.path() / "out" / "precious.txt");
  prepare(byte_config(dir), nullptr);
  test::write_file(dir.path() / "out" / "precious.txt", "keep me");
  try {
    prepare(byte_config(dir), nullptr);
    ADD_FAILURE() << "prepare replaced a folder holding a file it did not write";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("holds 'precious.txt', which prepare did not write"),
              std::string::npos) << e.what();
  }
  EXPECT_TRUE(std::filesystem::exists(dir.path() / "out" / "precious.txt"));
}

// A failed prepare into the folder of an earlier one leaves that dataset as it was: the new
// output is built beside it and swapped in only when complete.
TEST(Prepare, AFailedRerunKeepsTheEarlierDataset) {
  test::TempDir dir;
  test::write_file(dir.path() / "in" / "a.txt", "some text for the first dataset\n");
  const nlohmann::json first = prepare(byte_config(dir), nullptr);
  const std::string manifest = test::read_file(dir.path() / "out" / "manifest.json");
  test::write_file(dir.path() / "bin" / "b.bin", std::string("\0\1\2", 3));
  PrepareConfig c = byte_config(dir);
  c.inputs = {dir.str("bin")};
  try {
    prepare(c, nullptr);
    ADD_FAILURE() << "binary files only, yet prepare succeeded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no text documents"), std::string::npos) << e.what();
  }
  EXPECT_EQ(test::read_file(dir.path() / "out" / "manifest.json"), manifest);
  EXPECT_EQ(Dataset::open(dir.str("out")).tokens(Split::train) +
                Dataset::open(dir.str("out")).tokens(Split::val),
            first["stats"]["all"]["tokens"].get<int64_t>());
  // Nothing of the failed attempt is left beside it; the same folder prepares again.
  for (const auto& e : std::filesystem::directory_iterator(dir.path()))
    EXPECT_EQ(e.path().filename().string().find(".out.partial"), std::string::npos);
  EXPECT_NO_THROW(prepare(byte_config(dir), nullptr));
}

TEST(Prepare, ShardsRespectTheLimitAndARerunReplacesThem) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 g(seed);
  test::TempDir dir;
  for (int i = 0; i < 25; ++i)
    test::write_file(dir.path() / "in" / ("d" + std::to_string(i)), test::random_text(g, 100 + g() % 4000));
  test::write_file(dir.path() / "single.txt", test::random_text(g, 9000));  // a file input
  PrepareConfig c = byte_config(dir, 0.2);
  c.inputs.push_back(dir.str("single.txt"));
  c.shard_tokens = 5000;
  const nlohmann::json a = prepare(c, nullptr);
  ASSERT_GT(a["shards"].size(), 4u);
  int64_t docs = 0;
  for (const auto& sh : a["shards"]) {
    // Full shards stay under the limit, except one holding a single longer document.
    if (sh["documents"].get<int64_t>() > 1) {
      EXPECT_LE(sh["tokens"].get<int64_t>(), 5000);
    }
    docs += sh["documents"].get<int64_t>();
  }
  EXPECT_EQ(docs, 26);
  bool found_single = false;
  for (const auto& d : a["documents"]) found_single |= d["name"] == "single.txt";
  EXPECT_TRUE(found_single);
  // Again into the same folder with one shard per split: the old shards are gone.
  c.shard_tokens = int64_t{1} << 30;
  const nlohmann::json b = prepare(c, nullptr);
  EXPECT_LE(b["shards"].size(), 2u);
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path() / "out")) {
    (void)e;
    ++files;
  }
  EXPECT_EQ(files, 1 + 2 * static_cast<int>(b["shards"].size()));  // manifest + bin/idx
  EXPECT_EQ(Dataset::open(dir.str("out")).tokens(Split::train) +
                Dataset::open(dir.str("out")).tokens(Split::val),
            a["stats"]["all"]["tokens"].get<int64_t>());
}

TEST(Prepare, BpeShardsDecodeToTheCleanedText) {
  if (!have_sentencepiece()) GTEST_SKIP() << "built without SentencePiece";
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 g(seed);
  test::TempDir dir;
  std::map<std::string, std::string> texts;
  for (int i = 0; i < 8; ++i) {
    std::string t = "Title " + std::to_string(i) + "\r\n*** START OF THE PROJECT GUTENBERG EBOOK T ***\r\n" ;
    const std::string body = test::random_text(g, 20000);
    std::string crlf;
    for (char ch : body) crlf += ch == '\n' ? std::string("\r\n") : std::string(1, ch);
    t += crlf + "*** END OF THE PROJECT GUTENBERG EBOOK T ***\r\nlicence\r\n";
    std::string clean = body;
    while (!clean.empty() && std::isspace(static_cast<unsigned char>(clean.back()))) clean.pop_back();
    const std::string name = "b" + std::to_string(i) + ".txt";
    texts[name] = clean + "\n";
    test::write_file(dir.path() / "in" / name, t);
  }
  PrepareConfig c = byte_config(dir, 0.0);
  c.tokenizer = "bpe";
  c.vocab_size = 350;
  c.strip_gutenberg = true;
  const nlohmann::json m = prepare(c, nullptr);
  EXPECT_EQ(m["tokenizer"]["kind"], "bpe");
  EXPECT_EQ(m["input"]["gutenberg_headers_stripped"].get<int>(), 8);
  EXPECT_EQ(m["input"]["gutenberg_footers_stripped"].get<int>(), 8);
  const Dataset ds = Dataset::open(dir.str("out"));
  const auto tok = Tokenizer::open(dir.str("out"));
  EXPECT_EQ(ds.vocab_size(), tok->vocab_size());
  // Document i of the training split, decoded, is the cleaned text of the file the
  // manifest lists i-th.
  ASSERT_EQ(ds.documents(Split::train), 8);
  int64_t i = 0;
  for (const auto& d : m["documents"]) {
    const std::vector<int32_t> ids = ds.document(Split::train, i++);
    EXPECT_EQ(static_cast<int64_t>(ids.size()), d["tokens"].get<int64_t>());
    EXPECT_EQ(tok->decode(ids), texts.at(d["name"])) << d["name"];
  }
  EXPECT_THROW(ds.validation_windows(16, 4), Error);  // val_fraction 0: no validation data
}

}  // namespace
}  // namespace moba::data
