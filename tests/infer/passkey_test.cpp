// The passkey test: the generator's prompts (exact length, one needle at the requested
// depth, the key nowhere else, determinism by seed; byte and BPE tokenizers), the scorer
// through engines that know the answer and engines that do not, `run_passkey` end to end
// on a trained run (through the whole-sequence forward test double), and bad input.
#include "infer/passkey.h"

#include <gtest/gtest.h>

#include <cmath>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <regex>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/prepare.h"
#include "infer/forward_engine.h"
#include "train/config.h"
#include "train/trainer.h"

namespace moba::infer {
namespace {

namespace fs = std::filesystem;
using infer::testing::ForwardEngineDouble;
using infer::testing::ScriptedEngineDouble;

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Prose-like filler with sentence ends, line breaks and numbers (which the key must avoid).
std::string filler_text(uint64_t seed, size_t bytes) {
  static const std::vector<std::string> words = {
      "the", "river", "ran", "past", "a", "house", "where", "the", "captain", "wrote", "letters",
      "at", "night", "in", "1848", "and", "42", "of", "them", "were", "lost", "garden", "road",
      "silence", "morning", "window", "caf\xC3\xA9"};
  std::mt19937_64 g(seed);
  std::string s;
  while (s.size() < bytes) {
    const int n = 4 + static_cast<int>(g() % 12);
    for (int i = 0; i < n; ++i) s += (i ? " " : "") + words[g() % words.size()];
    s += g() % 4 == 0 ? ".\n" : ". ";
  }
  return s;
}

size_t count(const std::string& hay, const std::string& needle) {
  size_t n = 0;
  for (size_t p = hay.find(needle); p != std::string::npos; p = hay.find(needle, p + 1)) ++n;
  return n;
}

// Everything a prompt must satisfy.
void check_case(const PasskeyGenerator& gen, const PasskeyCase& c) {
  SCOPED_TRACE("length " + std::to_string(c.length) + ", depth " + std::to_string(c.depth) +
               ", trial " + std::to_string(c.trial));
  const data::Tokenizer& tok = gen.tokenizer();
  ASSERT_EQ(static_cast<int64_t>(c.prompt.size()), c.length);
  ASSERT_EQ(c.key.size(), 5u);
  EXPECT_NE(c.key[0], '0');
  const std::string text = tok.decode(c.prompt);
  const std::string needle = PasskeyGenerator::needle_text(c.key);
  const std::string question = PasskeyGenerator::question_text();
  // The needle sentence once, the key only inside it (twice), the question at the very end.
  EXPECT_EQ(count(text, needle), 1u);
  EXPECT_EQ(count(text, c.key), 2u) << "the key must appear only in the needle";
  ASSERT_GE(text.size(), question.size());
  EXPECT_EQ(text.substr(text.size() - question.size()), question);
  EXPECT_LT(text.find(needle), text.size() - question.size());
  // The needle's tokens are where the case says, and decode to the needle.
  const std::vector<int32_t> nt(c.prompt.begin() + c.needle_begin, c.prompt.begin() + c.needle_end);
  EXPECT_EQ(tok.decode(nt), needle);
  // Depth: within kSnapTokens of depth x filler; the ends exactly.
  const double want = c.depth * static_cast<double>(c.filler);
  EXPECT_LE(std::abs(static_cast<double>(c.needle_begin) - want),
            PasskeyGenerator::kSnapTokens + 0.5);
  if (c.depth == 0.0) {
    EXPECT_EQ(c.needle_begin, 0);
  }
  if (c.depth == 1.0) {
    EXPECT_EQ(c.needle_end, c.length - static_cast<int64_t>(tok.encode(question).size()));
  }
  EXPECT_EQ(c.filler + (c.needle_end - c.needle_begin) +
                static_cast<int64_t>(tok.encode(question).size()),
            c.length);
  EXPECT_EQ(c.answer_tokens, static_cast<int64_t>(tok.encode(" " + c.key).size()));
}

void check_generator(const PasskeyGenerator& gen, const std::vector<int64_t>& lengths) {
  PasskeyGrid grid{.lengths = lengths, .depths = {0, 0.1, 0.25, 0.5, 0.75, 0.9, 1}, .trials = 3,
                   .seed = 5};
  const std::vector<PasskeyCase> cases = gen.make_all(grid);
  ASSERT_EQ(cases.size(), lengths.size() * 7 * 3);
  int snapped = 0;
  for (const PasskeyCase& c : cases) {
    check_case(gen, c);
    snapped += c.needle_begin != std::llround(c.depth * static_cast<double>(c.filler));
  }
  EXPECT_GT(snapped, 0) << "some needles move to a sentence end";
  // The same seed: the same prompts; another seed: other keys and filler.
  const std::vector<PasskeyCase> again = gen.make_all(grid);
  for (size_t i = 0; i < cases.size(); ++i) {
    EXPECT_EQ(cases[i].prompt, again[i].prompt);
    EXPECT_EQ(cases[i].key, again[i].key);
  }
  grid.seed = 6;
  const std::vector<PasskeyCase> other = gen.make_all(grid);
  int differ = 0;
  for (size_t i = 0; i < cases.size(); ++i) differ += cases[i].key != other[i].key;
  EXPECT_GT(differ, static_cast<int>(cases.size()) / 2);
  // Trials of one cell differ.
  EXPECT_NE(cases[0].key, cases[1].key);
}

TEST(PasskeyGenerator, ByteTokenizerTexts) {
  std::shared_ptr<const data::Tokenizer> tok = data::byte_tokenizer();
  PasskeyGenerator gen(tok, tok->encode(filler_text(1, 20000)));
  check_generator(gen, {100, 257, 1024, 4000});
  // Longer than the filler stream: it repeats, still exact.
  check_case(gen, gen.make(30000, 0.5, 0, 1, 5));
}

TEST(PasskeyGenerator, BpeTokenizerTexts) {
  if (!data::have_sentencepiece()) GTEST_SKIP() << "no SentencePiece in this build";
  const std::string corpus = filler_text(2, 200000);
  size_t pos = 0;
  const std::string model = data::train_bpe(
      [&](std::string& line) {
        if (pos >= corpus.size()) return false;
        const size_t e = std::min(corpus.find('\n', pos), corpus.size());
        line = corpus.substr(pos, e - pos);
        pos = e + 1;
        return true;
      },
      {.vocab_size = 400});
  std::shared_ptr<const data::Tokenizer> tok = data::bpe_tokenizer(model);
  ASSERT_EQ(tok->kind(), "bpe");
  PasskeyGenerator gen(tok, tok->encode(filler_text(3, 30000)));
  // BPE tokens are longer than bytes: fewer tokens hold the needle.
  EXPECT_LT(gen.min_length("71432"), static_cast<int64_t>(
                                         (PasskeyGenerator::needle_text("71432") +
                                          PasskeyGenerator::question_text()).size()));
  check_generator(gen, {gen.min_length("71432") + 20, 300, 2000});
}

TEST(PasskeyGenerator, FromAPreparedFolder) {
  const fs::path dir = fs::temp_directory_path() / ("moba-passkey-prep-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  for (int d = 0; d < 6; ++d) {
    fs::create_directories(dir / "docs");
    std::ofstream(dir / "docs" / ("d" + std::to_string(d) + ".txt")) << filler_text(10 + d, 3000);
  }
  data::PrepareConfig pc;
  pc.inputs = {(dir / "docs").string()};
  pc.out_dir = (dir / "prep").string();
  pc.tokenizer = "byte";
  pc.val_fraction = 0.3;
  pc.threads = 1;
  pc.progress = false;
  data::prepare(pc, nullptr);
  const data::Dataset ds = data::Dataset::open(pc.out_dir);
  const PasskeyGenerator gen =
      PasskeyGenerator::from_dataset(ds, data::Tokenizer::open(pc.out_dir), 100000);
  // Every document, validation first, joined by blank lines.
  int64_t tokens = 0;
  for (data::Split s : {data::Split::val, data::Split::train}) tokens += ds.tokens(s);
  EXPECT_EQ(gen.filler_tokens(), tokens + 2 * (ds.documents(data::Split::val) +
                                               ds.documents(data::Split::train) - 1));
  check_case(gen, gen.make(2000, 0.3, 1, 9, 5));
  fs::remove_all(dir);
}

TEST(PasskeyGenerator, BadInputIsNamed) {
  std::shared_ptr<const data::Tokenizer> tok = data::byte_tokenizer();
  PasskeyGenerator gen(tok, tok->encode(filler_text(1, 5000)));
  const auto grid_error = [&](PasskeyGrid g) { return message_of([&] { gen.make_all(g); }); };
  EXPECT_NE(grid_error({.lengths = {}, .depths = {0.5}}).find("--lengths: give at least one"),
            std::string::npos);
  EXPECT_NE(grid_error({.lengths = {500}, .depths = {}}).find("--depths: give at least one"),
            std::string::npos);
  EXPECT_NE(grid_error({.lengths = {500}, .depths = {0.5, 1.2}}).find("in [0, 1], got 1.2"),
            std::string::npos);
  EXPECT_NE(grid_error({.lengths = {500}, .depths = {-0.1}}).find("got -0.1"), std::string::npos);
  EXPECT_NE(grid_error({.lengths = {0}, .depths = {0.5}}).find("must be >= 1, got 0"),
            std::string::npos);
  EXPECT_NE(grid_error({.lengths = {500}, .depths = {0.5}, .trials = 0}).find("--trials"),
            std::string::npos);
  EXPECT_NE(grid_error({.lengths = {50}, .depths = {0.5}}).find("cannot hold the needle"),
            std::string::npos);
  EXPECT_NE(message_of([&] { PasskeyGenerator(tok, {}); }).find("needs filler text"),
            std::string::npos);
}

TEST(PasskeyDecoy, DiffersInEveryDigit) {
  EXPECT_EQ(passkey_decoy("71432"), "26987");
  EXPECT_EQ(passkey_decoy("50000"), "95555");  // a leading 0 becomes 9
  for (const std::string k : {"1", "5", "99999", "55555", "123456789012345678"}) {
    const std::string d = passkey_decoy(k);
    ASSERT_EQ(d.size(), k.size());
    for (size_t i = 0; i < k.size(); ++i) EXPECT_NE(d[i], k[i]) << k;
  }
}

TEST(PasskeyCorrect, LeadingDigitsMustEqualTheKey) {
  EXPECT_TRUE(passkey_correct(" 71432", "71432"));
  EXPECT_TRUE(passkey_correct("71432.", "71432"));
  EXPECT_TRUE(passkey_correct("\n 71432 is", "71432"));
  EXPECT_FALSE(passkey_correct(" 714321", "71432"));
  EXPECT_FALSE(passkey_correct(" 7143", "71432"));
  EXPECT_FALSE(passkey_correct(" x71432", "71432"));
  EXPECT_FALSE(passkey_correct("", "71432"));
}

model::ModelConfig byte_model(int64_t seq_len) {
  model::ModelConfig m;
  m.vocab_size = 256;
  m.width = 32;
  m.layers = 2;
  m.heads = 2;
  m.mlp_multiple_of = 16;
  m.seq_len = seq_len;
  m.attention.block_size = 32;
  m.attention.top_k = 2;
  return m;
}

// The key read from the prompt's text, as an engine that "knows" the answer would.
std::vector<int32_t> oracle(const data::Tokenizer& tok, const std::vector<int32_t>& prompt) {
  static const std::regex re("The pass key is ([0-9]+)\\.");
  std::smatch m;
  const std::string text = tok.decode(prompt);
  if (!std::regex_search(text, m, re)) return {};
  return tok.encode(" " + m[1].str());
}

TEST(PasskeyScore, AnEngineThatKnowsScoresOneAndOneThatDoesNotZero) {
  std::shared_ptr<const data::Tokenizer> tok = data::byte_tokenizer();
  PasskeyGenerator gen(tok, tok->encode(filler_text(4, 20000)));
  const PasskeyGrid grid{.lengths = {200, 400}, .depths = {0, 0.5, 1}, .trials = 3, .seed = 2};
  const std::vector<PasskeyCase> cases = gen.make_all(grid);  // 18: batches of 4 pad the last
  for (int64_t batch : {1, 4}) {
    ScriptedEngineDouble knows(byte_model(512), batch, 512,
                               [&](const std::vector<int32_t>& p) { return oracle(*tok, p); });
    std::vector<size_t> progress;
    const std::vector<PasskeyOutcome> good =
        score_passkey(knows, *tok, cases, [&](size_t done, size_t) { progress.push_back(done); });
    EXPECT_EQ(progress.back(), cases.size());
    EXPECT_EQ(progress.size(), (cases.size() + batch - 1) / batch);
    const PasskeyTable t = tabulate(grid, cases, good);
    for (size_t d = 0; d < 3; ++d)
      for (size_t l = 0; l < 2; ++l) EXPECT_EQ(t.accuracy(d, l), 1.0);
    for (size_t i = 0; i < cases.size(); ++i) EXPECT_EQ(good[i].continuation, " " + cases[i].key);
    // Teacher-forced answer losses: the oracle puts logit 1 on each token of " <key>" and 0
    // elsewhere (V = 256), so the key's answer costs ln(255 + e) - 1 per token; the decoy
    // differs in its 5 digits (not the space), which cost 1 more each: 5/6 more per token.
    const double hit = std::log(255.0 + std::exp(1.0)) - 1.0;
    for (size_t i = 0; i < cases.size(); ++i) {
      EXPECT_NEAR(good[i].key_nll, hit, 1e-9) << i;
      EXPECT_NEAR(good[i].decoy_nll, hit + 5.0 / 6.0, 1e-9) << i;
    }
    EXPECT_NEAR(tabulate(grid, cases, good).key_nll[1][1], hit, 1e-9);
    // An engine that answers a wrong number (the key with its last digit changed).
    ScriptedEngineDouble wrong(byte_model(512), batch, 512, [&](const std::vector<int32_t>& p) {
      std::vector<int32_t> a = oracle(*tok, p);
      a.back() = '0' + (a.back() - '0' + 1) % 10;
      return a;
    });
    const PasskeyTable w = tabulate(grid, cases, score_passkey(wrong, *tok, cases));
    for (size_t d = 0; d < 3; ++d)
      for (size_t l = 0; l < 2; ++l) EXPECT_EQ(w.correct[d][l], 0);
  }
  // An answer one token short of the key is not read as the key.
  ScriptedEngineDouble shy(byte_model(512), 1, 512, [&](const std::vector<int32_t>& p) {
    std::vector<int32_t> a = oracle(*tok, p);
    a.pop_back();
    a.push_back('.');
    return a;
  });
  for (const PasskeyOutcome& o : score_passkey(shy, *tok, cases)) EXPECT_FALSE(o.correct);
  // An engine too small for the prompt and its answer.
  ScriptedEngineDouble small(byte_model(512), 1, 404, [&](const std::vector<int32_t>& p) {
    return oracle(*tok, p);
  });
  EXPECT_NE(message_of([&] { score_passkey(small, *tok, cases); })
                .find("need a cache of 405 tokens; the engine holds 404"),
            std::string::npos);
}

// A tiny byte-level run on prepared text, trained a few steps.
struct TrainedRun {
  fs::path dir;
  std::string run, data;
  TrainedRun(const std::string& name, const std::string& attention) {
    dir = fs::temp_directory_path() / ("moba-passkey-" + name + "-" + std::to_string(::getpid()));
    fs::remove_all(dir);
    for (int d = 0; d < 8; ++d) {
      fs::create_directories(dir / "docs");
      std::ofstream(dir / "docs" / ("d" + std::to_string(d) + ".txt")) << filler_text(20 + d, 4000);
    }
    data::PrepareConfig pc;
    pc.inputs = {(dir / "docs").string()};
    pc.out_dir = data = (dir / "prep").string();
    pc.tokenizer = "byte";
    pc.val_fraction = 0.25;
    pc.threads = 1;
    pc.progress = false;
    data::prepare(pc, nullptr);
    train::RunConfig c = train::parse_config(R"(
name = "passkey"
[model]
vocab_size = 256
width = 32
layers = 2
heads = 2
mlp_multiple_of = 16
seq_len = 256
[attention]
kind = ")" + attention + R"("
block_size = 32
top_k = 2
[train]
batch_size = 2
steps = 4
lr = 1e-2
warmup_steps = 1
[eval]
every = 4
windows = 2
batch_size = 2
[checkpoint]
every = 4
)",
                                             "passkey.toml");
    c.data = data;
    run = (dir / "run").string();
    train::Trainer(c, {run, "", false, nullptr}).run();
  }
  ~TrainedRun() { fs::remove_all(dir); }
};

EngineFactory forward_double() {
  return [](const model::ModelConfig& m, std::span<const float> p, const EngineOptions& o) {
    return std::make_unique<ForwardEngineDouble>(m, p, o);
  };
}

TEST(RunPasskey, EndToEndOnATrainedRun) {
  TrainedRun r("e2e", "moba");
  PasskeyRunOptions o;
  o.run_dir = r.run;
  o.out_dir = (r.dir / "out").string();
  o.batch = 2;
  o.grid = {.lengths = {128, 192, 251}, .depths = {0, 0.5, 1}, .trials = 2, .seed = 3};
  std::vector<EngineOptions> seen;
  const EngineFactory f = [&](const model::ModelConfig& m, std::span<const float> p,
                              const EngineOptions& eo) -> std::unique_ptr<Engine> {
    seen.push_back(eo);
    return std::make_unique<ForwardEngineDouble>(m, p, eo);
  };
  const nlohmann::json j = run_passkey(o, f, nullptr);
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_TRUE(seen[0].moba);
  EXPECT_EQ(seen[0].batch, 2);
  EXPECT_EQ(seen[0].capacity, 251 + 6 - 1);  // the longest prompt and " NNNNN" but its last
  EXPECT_EQ(j["attention"], "moba");
  EXPECT_EQ(j["lengths"], (std::vector<int64_t>{128, 192, 251}));
  ASSERT_EQ(j["accuracy"].size(), 3u);
  ASSERT_EQ(j["accuracy"][0].size(), 3u);
  ASSERT_EQ(j["cases"].size(), 18u);
  for (const auto& c : j["cases"]) EXPECT_EQ(c["correct"].get<bool>(), passkey_correct(c["continuation"], c["key"]));
  // On disk: the table, and the figure where cairo is built in.
  std::ifstream in(fs::path(o.out_dir) / "passkey.json");
  EXPECT_EQ(nlohmann::json::parse(in), j);
#ifdef MOBA_WITH_CAIRO
  EXPECT_GT(fs::file_size(fs::path(o.out_dir) / "passkey.png"), 1000u);
  EXPECT_GT(fs::file_size(fs::path(o.out_dir) / "passkey.svg"), 1000u);
  if (const char* keep = std::getenv("MOBA_TEST_KEEP_FIGURES"))  // to look at the figure
    fs::copy(o.out_dir, keep, fs::copy_options::overwrite_existing | fs::copy_options::recursive);
#endif
  // The same seed again: the same table and answers.
  const nlohmann::json again = run_passkey(o, forward_double(), nullptr);
  EXPECT_EQ(again["cases"], j["cases"]);
  // --attention full on the MoBA run.
  o.attention = "full";
  seen.clear();
  EXPECT_EQ(run_passkey(o, f, nullptr)["attention"], "full");
  EXPECT_FALSE(seen.at(0).moba);
}

TEST(PasskeyFigure, DrawsATableOfAnyShape) {
  const fs::path dir = fs::temp_directory_path() / ("moba-passkey-fig-" + std::to_string(::getpid()));
  PasskeyTable t{.lengths = {1024, 2048, 4096, 8192, 16384, 32768},
                 .depths = {0, 0.1, 0.25, 0.5, 0.75, 0.9, 1},
                 .trials = 10,
                 .correct = {},
                 .key_nll = {},
                 .decoy_nll = {}};
  for (size_t d = 0; d < t.depths.size(); ++d) {
    t.correct.emplace_back();
    for (size_t l = 0; l < t.lengths.size(); ++l)
      t.correct.back().push_back(static_cast<int64_t>((d * 3 + l * 2) % 11));
  }
  const std::vector<std::string> files =
      write_passkey_figure(t, "Passkey retrieval: a table of every accuracy", dir.string());
#ifdef MOBA_WITH_CAIRO
  ASSERT_EQ(files.size(), 2u);
  for (const std::string& f : files) EXPECT_GT(fs::file_size(f), 1000u) << f;
  if (const char* keep = std::getenv("MOBA_TEST_KEEP_FIGURES"))
    fs::copy_file(dir / "passkey.png", fs::path(keep) / "table.png",
                  fs::copy_options::overwrite_existing);
#else
  EXPECT_TRUE(files.empty());
#endif
  fs::remove_all(dir);
}

TEST(RunPasskey, BadInputIsNamed) {
  TrainedRun r("bad", "full");
  PasskeyRunOptions o;
  o.run_dir = r.run;
  o.out_dir = (r.dir / "out").string();
  o.grid = {.lengths = {128, 252}, .depths = {0.5}, .trials = 1};
  // 252 + 6 - 1 = 257 positions > seq_len 256; nothing is written.
  EXPECT_NE(message_of([&] { run_passkey(o, forward_double(), nullptr); })
                .find("need 257 positions, more than the model's context (model.seq_len = 256)"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(o.out_dir));
  o.grid.lengths = {200};
  o.attention = "moba";
  EXPECT_NE(message_of([&] { run_passkey(o, forward_double(), nullptr); }).find("has no MoBA layers"),
            std::string::npos);
  o.attention = "auto";
  o.grid.depths = {1.5};
  EXPECT_NE(message_of([&] { run_passkey(o, forward_double(), nullptr); }).find("in [0, 1]"),
            std::string::npos);
  o.grid.depths = {0.5};
  o.run_dir = (r.dir / "docs").string();
  EXPECT_NE(message_of([&] { run_passkey(o, forward_double(), nullptr); })
                .find("is not a run folder (no config.toml)"),
            std::string::npos);
  // A data folder with another tokenizer (BPE) than the run's byte-level data.
  if (data::have_sentencepiece()) {
    data::PrepareConfig pc;
    pc.inputs = {(r.dir / "docs").string()};
    pc.out_dir = (r.dir / "bpe").string();
    pc.tokenizer = "bpe";
    pc.vocab_size = 300;
    pc.val_fraction = 0.25;
    pc.threads = 1;
    pc.progress = false;
    data::prepare(pc, nullptr);
    o.run_dir = r.run;
    o.data_dir = pc.out_dir;
    const std::string m = message_of([&] { run_passkey(o, forward_double(), nullptr); });
    EXPECT_NE(m.find("--data '" + pc.out_dir + "' was tokenized with"), std::string::npos) << m;
  }
}

}  // namespace
}  // namespace moba::infer
