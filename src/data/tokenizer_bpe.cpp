// SentencePiece BPE: training on the corpus and encoding/decoding with the trained model.
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <atomic>
#include <fstream>
#include <sstream>
#include <string_view>
#include <unordered_map>

#include "core/error.h"
#include "data/tokenizer.h"

namespace moba::data {
namespace {

// Heterogeneous lookup: find a std::string key by string_view without a copy.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

class BpeTokenizer final : public Tokenizer {
 public:
  BpeTokenizer(const std::string& serialized, const std::string& where, bool word_cache)
      : word_cache_(word_cache) {
    const auto st = sp_.LoadFromSerializedProto(serialized);
    MOBA_CHECK(st.ok(), where, ": not a SentencePiece model (", st.ToString(), ")");
    // The newline is the byte-fallback piece <0x0A>: the model never sees '\n' inside a
    // piece because documents are encoded line by line (see encode).
    newline_id_ = sp_.PieceToId("<0x0A>");
    MOBA_CHECK(newline_id_ != sp_.unk_id(), where,
               ": the SentencePiece model has no byte pieces (train it with byte_fallback)");
  }
  std::string kind() const override { return "bpe"; }
  int64_t vocab_size() const override { return sp_.GetPieceSize(); }

  // Line by line: SentencePiece's BPE keeps a heap over the whole input, and a line is
  // where pieces end anyway, so the ids equal those of the whole text with '\n' as <0x0A>.
  void encode(std::string_view text, std::vector<int32_t>& ids) const override {
    size_t pos = 0;
    while (pos < text.size()) {
      size_t eol = text.find('\n', pos);
      const bool has_newline = eol != std::string_view::npos;
      if (!has_newline) eol = text.size();
      if (eol > pos) encode_line(text.substr(pos, eol - pos), ids);
      if (has_newline) ids.push_back(newline_id_);
      pos = eol + 1;
    }
  }

  std::string decode(std::span<const int32_t> ids) const override {
    std::vector<int> v(ids.begin(), ids.end());
    for (int id : v)
      MOBA_CHECK(id >= 0 && id < sp_.GetPieceSize(), "BPE tokenizer: id ", id,
                 " is outside [0, ", sp_.GetPieceSize(), ")");
    std::string s;
    const auto st = sp_.Decode(v, &s);
    MOBA_CHECK(st.ok(), "SentencePiece decode failed: ", st.ToString());
    return s;
  }

 private:
  // SentencePiece's encoder takes about 220 bytes of memory per input byte (11 GB for one
  // 50 MB line without a space), so no call sees more than kBpeChunkBytes: a longer text is
  // cut at the last word start (a space after a non-space) in the chunk, which changes no id
  // (see encode_line), or, in a run without one, at a UTF-8 character boundary, where no
  // piece may then cross the cut (docs/data.md, "Tokenizers").
  void encode_plain(std::string_view s, std::vector<int32_t>& ids) const {
    while (s.size() > kBpeChunkBytes) {
      size_t cut = kBpeChunkBytes;
      while (cut > 0 && !(s[cut] == ' ' && s[cut - 1] != ' ')) --cut;
      if (cut == 0) {
        cut = kBpeChunkBytes;
        while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
        if (cut == 0) cut = kBpeChunkBytes;  // not UTF-8 at all: cut anywhere
      }
      encode_chunk(s.substr(0, cut), ids);
      s.remove_prefix(cut);
    }
    encode_chunk(s, ids);
  }

  void encode_chunk(std::string_view s, std::vector<int32_t>& ids) const {
    std::vector<int> out;
    const auto st = sp_.Encode(s, &out);
    MOBA_CHECK(st.ok(), "SentencePiece encode failed: ", st.ToString());
    ids.insert(ids.end(), out.begin(), out.end());
  }

  // Word by word with a cache (5-10x faster on prose, where most words repeat). A "word"
  // is a run of spaces and the non-spaces after it. Exact: the model is trained with
  // split_by_whitespace, so no piece holds a non-space followed by a space (U+2581
  // inside SentencePiece); no merge crosses a word's start, and BPE's merges inside one
  // word do not depend on the others. The tokenizer test checks this against whole lines.
  void encode_line(std::string_view line, std::vector<int32_t>& ids) const {
    if (!word_cache_) return encode_plain(line, ids);
    struct Cache {
      uint64_t owner = 0;
      std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> words;
    };
    thread_local Cache cache;
    if (cache.owner != instance_) {
      cache.words.clear();
      cache.owner = instance_;
    }
    size_t start = 0;
    for (size_t i = 1; i <= line.size(); ++i) {
      if (i < line.size() && !(line[i] == ' ' && line[i - 1] != ' ')) continue;
      const std::string_view w = line.substr(start, i - start);
      start = i;
      if (w.size() > 64) {  // long runs (rules, tables) are rare: not worth a cache slot
        encode_plain(w, ids);
        continue;
      }
      auto it = cache.words.find(w);
      if (it == cache.words.end()) {
        if (cache.words.size() >= (1u << 20)) cache.words.clear();  // bound the memory
        std::vector<int32_t> wid;
        encode_plain(w, wid);
        it = cache.words.emplace(std::string(w), std::move(wid)).first;
      }
      ids.insert(ids.end(), it->second.begin(), it->second.end());
    }
  }

  static inline std::atomic<uint64_t> next_instance_{1};
  const uint64_t instance_ = next_instance_++;  // names this tokenizer's thread caches
  sentencepiece::SentencePieceProcessor sp_;
  bool word_cache_;
  int newline_id_ = 0;
};

class LineIterator final : public sentencepiece::SentenceIterator {
 public:
  explicit LineIterator(const std::function<bool(std::string&)>& next) : next_(next) { Next(); }
  bool done() const override { return done_; }
  void Next() override { done_ = !next_(line_); }
  const std::string& value() const override { return line_; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  const std::function<bool(std::string&)>& next_;
  std::string line_;
  bool done_ = false;
};

}  // namespace

bool have_sentencepiece() { return true; }

std::unique_ptr<Tokenizer> bpe_tokenizer(const std::string& serialized_model, bool word_cache) {
  return std::make_unique<BpeTokenizer>(serialized_model, "BPE model", word_cache);
}

std::unique_ptr<Tokenizer> bpe_tokenizer_from_file(const std::string& model_path) {
  std::ifstream f(model_path, std::ios::binary);
  MOBA_CHECK(f.good(), model_path, ": cannot open the SentencePiece model");
  std::ostringstream ss;
  ss << f.rdbuf();
  return std::make_unique<BpeTokenizer>(ss.str(), model_path, true);
}

std::string train_bpe(const std::function<bool(std::string&)>& next_line,
                      const BpeTrainOptions& o) {
  MOBA_CHECK(o.vocab_size >= 260, "BPE vocabulary size must be >= 260 (<unk> and 256 byte "
             "pieces need 257), got ", o.vocab_size);
  const std::unordered_map<std::string, std::string> args = {
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(o.vocab_size)},
      // Lossless: no Unicode normalisation, no invented or removed spaces.
      {"normalization_rule_name", "identity"},
      {"add_dummy_prefix", "false"},
      {"remove_extra_whitespaces", "false"},
      {"allow_whitespace_only_pieces", "true"},
      {"byte_fallback", "true"},         // any character, even unseen, encodes as bytes
      {"character_coverage", "0.9995"},  // the rarest 0.05% of characters go to bytes
      {"split_digits", "true"},
      {"max_sentence_length", "16384"},  // bytes; longer lines are left out of training
      {"input_sentence_size", "0"},      // we sample the lines ourselves, deterministically
      {"shuffle_input_sentence", "false"},
      {"unk_id", "0"}, {"bos_id", "-1"}, {"eos_id", "-1"}, {"pad_id", "-1"},
      {"hard_vocab_limit", "false"},     // a small corpus gives fewer pieces, not an error
      {"num_threads", std::to_string(std::max(1, o.threads))},
      {"minloglevel", o.verbose ? "0" : "2"},
  };
  LineIterator it(next_line);
  std::string model;
  const auto st = sentencepiece::SentencePieceTrainer::Train(args, &it, &model);
  MOBA_CHECK(st.ok(), "SentencePiece BPE training failed: ", st.ToString());
  return model;
}

}  // namespace moba::data
