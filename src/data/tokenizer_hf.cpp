// Hugging Face tokenizer files from our tokenizers (see tokenizer_hf.h and docs/hf.md).
#include "data/tokenizer_hf.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <tuple>
#include <unordered_map>

#include "core/error.h"
#include "core/text_file.h"

namespace moba::data {
namespace fs = std::filesystem;
namespace {

// --- protobuf wire format, enough for sentencepiece_model.proto -------------------------

class Wire {
 public:
  Wire(std::string_view buf, const std::string& where) : buf_(buf), where_(where) {}
  bool done() const { return pos_ >= buf_.size(); }

  uint64_t varint() {
    uint64_t x = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      MOBA_CHECK(pos_ < buf_.size(), where_, ": not a SentencePiece model (truncated varint)");
      const auto b = static_cast<unsigned char>(buf_[pos_++]);
      x |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return x;
    }
    MOBA_CHECK(false, where_, ": not a SentencePiece model (bad varint)");
    return 0;
  }
  std::string_view bytes() {
    const uint64_t n = varint();
    MOBA_CHECK(n <= buf_.size() - pos_, where_, ": not a SentencePiece model (truncated field)");
    const std::string_view s = buf_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  float fixed32_float() {
    MOBA_CHECK(buf_.size() - pos_ >= 4, where_, ": not a SentencePiece model (truncated float)");
    uint32_t bits = 0;
    for (int i = 3; i >= 0; --i) bits = (bits << 8) | static_cast<unsigned char>(buf_[pos_ + i]);
    pos_ += 4;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
  void skip(int wire) {
    switch (wire) {
      case 0: varint(); break;
      case 1: advance(8); break;
      case 2: bytes(); break;
      case 5: advance(4); break;
      default: MOBA_CHECK(false, where_, ": not a SentencePiece model (wire type ", wire, ")");
    }
  }

 private:
  void advance(size_t n) {
    MOBA_CHECK(buf_.size() - pos_ >= n, where_, ": not a SentencePiece model (truncated)");
    pos_ += n;
  }
  std::string_view buf_;
  const std::string& where_;
  size_t pos_ = 0;
};

// "▁", SentencePiece's escaped space.
const std::string kSpace = "\xe2\x96\x81";

// The UTF-8 characters of s (split points of a piece).
std::vector<size_t> char_starts(const std::string& s) {
  std::vector<size_t> starts;
  for (size_t i = 0; i < s.size(); ++i)
    if ((static_cast<unsigned char>(s[i]) & 0xc0) != 0x80) starts.push_back(i);
  return starts;
}

std::string utf8(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xc0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    s += static_cast<char>(0xe0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    s += static_cast<char>(0x80 | (cp & 0x3f));
  }
  return s;
}

nlohmann::json added_token(int64_t id, const std::string& content) {
  return {{"id", id},          {"content", content}, {"single_word", false}, {"lstrip", false},
          {"rstrip", false},   {"normalized", false}, {"special", true}};
}

void write_json(const fs::path& path, const nlohmann::json& j) {
  std::ofstream f(path);
  f << j.dump(2) << "\n";
  f.flush();
  MOBA_CHECK(f.good(), "writing '", path.string(), "' failed");
}

}  // namespace

SpModel parse_sentencepiece_model(const std::string& serialized, const std::string& where) {
  SpModel m;
  Wire top(serialized, where);
  while (!top.done()) {
    const uint64_t key = top.varint();
    const int field = static_cast<int>(key >> 3), wire = static_cast<int>(key & 7);
    if (field == 1 && wire == 2) {  // SentencePiece pieces
      Wire p(top.bytes(), where);
      SpModel::Piece piece;
      while (!p.done()) {
        const uint64_t k = p.varint();
        const int f = static_cast<int>(k >> 3), w = static_cast<int>(k & 7);
        if (f == 1 && w == 2) piece.piece = std::string(p.bytes());
        else if (f == 2 && w == 5) piece.score = p.fixed32_float();
        else if (f == 3 && w == 0) piece.type = static_cast<int>(p.varint());
        else p.skip(w);
      }
      m.pieces.push_back(std::move(piece));
    } else if (field == 2 && wire == 2) {  // TrainerSpec
      Wire t(top.bytes(), where);
      while (!t.done()) {
        const uint64_t k = t.varint();
        const int f = static_cast<int>(k >> 3), w = static_cast<int>(k & 7);
        if (f == 3 && w == 0) m.model_type = static_cast<int>(t.varint());
        else t.skip(w);
      }
    } else if (field == 3 && wire == 2) {  // NormalizerSpec
      Wire n(top.bytes(), where);
      while (!n.done()) {
        const uint64_t k = n.varint();
        const int f = static_cast<int>(k >> 3), w = static_cast<int>(k & 7);
        if (f == 1 && w == 2) m.normalizer = std::string(n.bytes());
        else if (f == 3 && w == 0) m.add_dummy_prefix = n.varint() != 0;
        else if (f == 4 && w == 0) m.remove_extra_whitespaces = n.varint() != 0;
        else if (f == 5 && w == 0) m.escape_whitespaces = n.varint() != 0;
        else n.skip(w);
      }
    } else {
      top.skip(wire);
    }
  }
  MOBA_CHECK(!m.pieces.empty(), where, ": not a SentencePiece model (no pieces)");
  return m;
}

nlohmann::json hf_byte_tokenizer_json() {
  // GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the others
  // for the code points from 256 on, in byte order.
  nlohmann::json vocab = nlohmann::json::object();
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
    vocab[utf8(printable ? b : next++)] = b;
  }
  const nlohmann::json byte_level = {{"type", "ByteLevel"},
                                     {"add_prefix_space", false},
                                     {"trim_offsets", false},
                                     {"use_regex", false}};
  return {{"version", "1.0"},
          {"truncation", nullptr},
          {"padding", nullptr},
          {"added_tokens", nlohmann::json::array()},
          {"normalizer", nullptr},
          {"pre_tokenizer", byte_level},
          {"post_processor", nullptr},
          {"decoder", byte_level},
          {"model",
           {{"type", "BPE"},
            {"dropout", nullptr},
            {"unk_token", nullptr},
            {"continuing_subword_prefix", nullptr},
            {"end_of_word_suffix", nullptr},
            {"fuse_unk", false},
            {"byte_fallback", false},
            {"ignore_merges", false},
            {"vocab", vocab},
            {"merges", nlohmann::json::array()}}}};
}

nlohmann::json hf_bpe_tokenizer_json(const SpModel& m, const std::string& where) {
  MOBA_CHECK(m.model_type == 2, where, ": SentencePiece model type ", m.model_type,
             " is not BPE (2); only BPE models convert to a Hugging Face tokenizer");
  MOBA_CHECK(m.normalizer == "identity", where, ": SentencePiece normalization '", m.normalizer,
             "' is not converted (only 'identity', as `moba prepare` trains)");
  MOBA_CHECK(!m.add_dummy_prefix, where,
             ": SentencePiece add_dummy_prefix = true is not converted (we encode line by line)");
  MOBA_CHECK(!m.remove_extra_whitespaces, where,
             ": SentencePiece remove_extra_whitespaces = true is not converted");
  MOBA_CHECK(m.escape_whitespaces, where,
             ": SentencePiece escape_whitespaces = false is not converted");
  nlohmann::json vocab = nlohmann::json::object();
  std::unordered_map<std::string, int64_t> mergeable;  // normal pieces: what BPE merges into
  std::string unk;
  bool byte_fallback = false;
  nlohmann::json added = nlohmann::json::array();
  for (size_t id = 0; id < m.pieces.size(); ++id) {
    const SpModel::Piece& p = m.pieces[id];
    MOBA_CHECK(!vocab.contains(p.piece), where, ": piece '", p.piece, "' appears twice");
    vocab[p.piece] = id;
    if (p.type == SpModel::normal || p.type == SpModel::user_defined ||
        p.type == SpModel::unused)
      mergeable.emplace(p.piece, static_cast<int64_t>(id));
    if (p.type == SpModel::unknown) unk = p.piece;
    if (p.type == SpModel::byte) byte_fallback = true;
    if (p.type == SpModel::control) added.push_back(added_token(static_cast<int64_t>(id), p.piece));
  }
  // SentencePiece's BPE merges, at every step, the adjacent pair whose concatenation is a
  // piece of the highest score (the leftmost on ties). HF's BPE merges the pair of the
  // lowest rank (the leftmost on ties): rank every split (l, r) of every mergeable piece by
  // that piece's score, highest first.
  struct Merge {
    float score;
    int64_t id, left_id, right_id;
    std::string left, right;
  };
  std::vector<Merge> merges;
  for (const auto& [piece, id] : mergeable) {
    if (m.pieces[id].type != SpModel::normal) continue;  // user-defined pieces are not merged
    const std::vector<size_t> starts = char_starts(piece);
    for (size_t k = 1; k < starts.size(); ++k) {
      const std::string l = piece.substr(0, starts[k]), r = piece.substr(starts[k]);
      const auto li = mergeable.find(l), ri = mergeable.find(r);
      if (li == mergeable.end() || ri == mergeable.end()) continue;
      merges.push_back({m.pieces[id].score, id, li->second, ri->second, l, r});
    }
  }
  std::sort(merges.begin(), merges.end(), [](const Merge& a, const Merge& b) {
    return std::tie(b.score, a.id, a.left_id, a.right_id) <
           std::tie(a.score, b.id, b.left_id, b.right_id);
  });
  nlohmann::json merge_list = nlohmann::json::array();
  for (const Merge& mg : merges) merge_list.push_back({mg.left, mg.right});
  if (!unk.empty()) {
    nlohmann::json u = added_token(vocab[unk].get<int64_t>(), unk);
    added.insert(added.begin(), u);
  }
  return {{"version", "1.0"},
          {"truncation", nullptr},
          {"padding", nullptr},
          {"added_tokens", added},
          {"normalizer",
           {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kSpace}}},
          {"pre_tokenizer", nullptr},
          {"post_processor", nullptr},
          {"decoder",
           {{"type", "Sequence"},
            {"decoders",
             {{{"type", "Replace"}, {"pattern", {{"String", kSpace}}}, {"content", " "}},
              {{"type", "ByteFallback"}},
              {{"type", "Fuse"}}}}}},
          {"model",
           {{"type", "BPE"},
            {"dropout", nullptr},
            {"unk_token", unk.empty() ? nlohmann::json(nullptr) : nlohmann::json(unk)},
            {"continuing_subword_prefix", nullptr},
            {"end_of_word_suffix", nullptr},
            {"fuse_unk", true},
            {"byte_fallback", byte_fallback},
            {"ignore_merges", false},
            {"vocab", vocab},
            {"merges", merge_list}}}};
}

nlohmann::json hf_tokenizer_config(const std::string& unk_token, int64_t max_length) {
  nlohmann::json j = {{"tokenizer_class", "PreTrainedTokenizerFast"},
                      {"model_max_length", max_length},
                      {"clean_up_tokenization_spaces", false},
                      {"add_bos_token", false},
                      {"add_eos_token", false},
                      {"bos_token", nullptr},
                      {"eos_token", nullptr},
                      {"pad_token", nullptr}};
  j["unk_token"] = unk_token.empty() ? nlohmann::json(nullptr) : nlohmann::json(unk_token);
  return j;
}

std::string write_hf_tokenizer(const std::string& data_dir, const std::string& out_dir,
                               int64_t max_length) {
  const fs::path manifest_path = fs::path(data_dir) / "manifest.json";
  nlohmann::json manifest;
  std::string kind, model_file;
  try {
    manifest = nlohmann::json::parse(read_text_file(manifest_path));
    kind = manifest.at("tokenizer").at("kind").get<std::string>();
    if (kind == "bpe") model_file = manifest.at("tokenizer").at("model").get<std::string>();
  } catch (const nlohmann::json::exception& e) {
    MOBA_CHECK(false, manifest_path.string(), ": not a valid manifest (", e.what(), ")");
  }
  const fs::path out(out_dir);
  if (kind == "byte") {
    write_json(out / "tokenizer.json", hf_byte_tokenizer_json());
    write_json(out / "tokenizer_config.json", hf_tokenizer_config("", max_length));
    return kind;
  }
  MOBA_CHECK(kind == "bpe", manifest_path.string(), ": unknown tokenizer kind '", kind, "'");
  const fs::path model_path = fs::path(data_dir) / model_file;
  const std::string serialized = read_text_file(model_path);
  const SpModel sp = parse_sentencepiece_model(serialized, model_path.string());
  const nlohmann::json tok = hf_bpe_tokenizer_json(sp, model_path.string());
  write_json(out / "tokenizer.json", tok);
  const nlohmann::json& unk = tok.at("model").at("unk_token");
  write_json(out / "tokenizer_config.json",
             hf_tokenizer_config(unk.is_null() ? "" : unk.get<std::string>(), max_length));
  fs::copy_file(model_path, out / "tokenizer.model", fs::copy_options::overwrite_existing);
  return kind;
}

}  // namespace moba::data
