// Hugging Face tokenizer files (data/tokenizer_hf.h): the SentencePiece model read as
// protobuf, the byte tokenizer's 256 symbols, the BPE vocabulary and merges, the refusals.
// (That transformers then gives our ids is python/tests/test_hf_checkpoints.py.)
#include <gtest/gtest.h>

#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/tokenizer.h"
#include "data/tokenizer_hf.h"

namespace moba::data {
namespace {

std::string bpe_model() {
  std::vector<std::string> lines;
  for (int i = 0; i < 200; ++i)
    lines.push_back("the cat sat on the mat and the dog sat on the log " + std::to_string(i));
  size_t next = 0;
  BpeTrainOptions o;
  o.vocab_size = 300;
  return train_bpe(
      [&](std::string& line) {
        if (next == lines.size()) return false;
        line = lines[next++];
        return true;
      },
      o);
}

TEST(HfTokenizer, ByteTokenizerMapsEveryByteToItsValue) {
  const nlohmann::json j = hf_byte_tokenizer_json();
  const nlohmann::json& vocab = j["model"]["vocab"];
  ASSERT_EQ(vocab.size(), 256u);
  std::set<int> ids;
  for (const auto& [sym, id] : vocab.items()) ids.insert(id.get<int>());
  EXPECT_EQ(ids.size(), 256u);
  EXPECT_EQ(vocab["a"], 97);            // printable bytes stand for themselves
  EXPECT_EQ(vocab["\xc4\xa0"], 32);     // space is U+0120 (GPT-2's byte map)
  EXPECT_EQ(vocab["\xc4\x80"], 0);      // byte 0 is U+0100
  EXPECT_EQ(j["pre_tokenizer"]["use_regex"], false);
  EXPECT_TRUE(j["model"]["merges"].empty());
}

TEST(HfTokenizer, ReadsTheSentencePieceModel) {
  if (!have_sentencepiece()) GTEST_SKIP() << "built without SentencePiece";
  const std::string serialized = bpe_model();
  const SpModel m = parse_sentencepiece_model(serialized, "test.model");
  const auto tok = bpe_tokenizer(serialized);
  ASSERT_EQ(static_cast<int64_t>(m.pieces.size()), tok->vocab_size());
  EXPECT_EQ(m.model_type, 2);
  EXPECT_EQ(m.normalizer, "identity");
  EXPECT_FALSE(m.add_dummy_prefix);
  EXPECT_FALSE(m.remove_extra_whitespaces);
  EXPECT_EQ(m.pieces[0].type, SpModel::unknown);
  EXPECT_EQ(m.pieces[1].piece, "<0x00>");
  EXPECT_EQ(m.pieces[1].type, SpModel::byte);
  EXPECT_EQ(m.pieces[257].type, SpModel::normal);
  // decode through our tokenizer and the piece table agree on a normal piece
  const std::string p = m.pieces[257].piece;
  std::string text = p;
  for (size_t at; (at = text.find("\xe2\x96\x81")) != std::string::npos;) text.replace(at, 3, " ");
  EXPECT_EQ(tok->decode(std::vector<int32_t>{257}), text);
  EXPECT_THROW(parse_sentencepiece_model("\xff\xff", "bad.model"), Error);
}

TEST(HfTokenizer, BpeJsonHasTheVocabularyAndRankedMerges) {
  if (!have_sentencepiece()) GTEST_SKIP() << "built without SentencePiece";
  const SpModel m = parse_sentencepiece_model(bpe_model(), "test.model");
  const nlohmann::json j = hf_bpe_tokenizer_json(m, "test.model");
  const nlohmann::json& model = j["model"];
  EXPECT_EQ(model["vocab"].size(), m.pieces.size());
  EXPECT_EQ(model["vocab"]["<0x0A>"], 11);
  EXPECT_EQ(model["unk_token"], "<unk>");
  EXPECT_TRUE(model["byte_fallback"].get<bool>());
  ASSERT_FALSE(model["merges"].empty());
  // every merge joins two pieces into a piece; ranks follow the merged piece's score
  float last = 1e30f;
  for (const auto& mg : model["merges"]) {
    const std::string merged = mg[0].get<std::string>() + mg[1].get<std::string>();
    ASSERT_TRUE(model["vocab"].contains(merged)) << merged;
    const float score = m.pieces[model["vocab"][merged].get<size_t>()].score;
    EXPECT_LE(score, last);
    last = score;
  }
  EXPECT_EQ(j["normalizer"]["type"], "Replace");
}

TEST(HfTokenizer, RefusesSettingsItWouldNotReproduce) {
  SpModel m;
  m.pieces = {{"<unk>", 0.0f, SpModel::unknown}, {"a", -1.0f, SpModel::normal}};
  m.model_type = 2;
  m.normalizer = "identity";
  m.add_dummy_prefix = false;
  m.remove_extra_whitespaces = false;
  EXPECT_NO_THROW(hf_bpe_tokenizer_json(m, "x"));
  auto refused = [&](SpModel bad, const std::string& what) {
    try {
      hf_bpe_tokenizer_json(bad, "x.model");
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
      return;
    }
    ADD_FAILURE() << "no error for " << what;
  };
  SpModel u = m;
  u.model_type = 1;
  refused(u, "is not BPE");
  SpModel n = m;
  n.normalizer = "nmt_nfkc";
  refused(n, "normalization 'nmt_nfkc'");
  SpModel d = m;
  d.add_dummy_prefix = true;
  refused(d, "add_dummy_prefix");
  SpModel r = m;
  r.remove_extra_whitespaces = true;
  refused(r, "remove_extra_whitespaces");
}

}  // namespace
}  // namespace moba::data
