// The byte-level tokenizer and Tokenizer::open; SentencePiece lives in tokenizer_bpe.cpp.
#include "data/tokenizer.h"

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/safe_io.h"

namespace moba::data {
namespace {

class ByteTokenizer final : public Tokenizer {
 public:
  std::string kind() const override { return "byte"; }
  int64_t vocab_size() const override { return 256; }
  void encode(std::string_view text, std::vector<int32_t>& ids) const override {
    ids.reserve(ids.size() + text.size());
    for (unsigned char c : text) ids.push_back(c);
  }
  std::string decode(std::span<const int32_t> ids) const override {
    std::string s;
    s.reserve(ids.size());
    for (int32_t id : ids) {
      MOBA_CHECK(id >= 0 && id < 256, "byte tokenizer: id ", id, " is outside [0, 256)");
      s.push_back(static_cast<char>(id));
    }
    return s;
  }
};

}  // namespace

std::unique_ptr<Tokenizer> byte_tokenizer() { return std::make_unique<ByteTokenizer>(); }

std::unique_ptr<Tokenizer> Tokenizer::open(const std::string& data_dir) {
  const std::string manifest = (std::filesystem::path(data_dir) / "manifest.json").string();
  MOBA_CHECK(std::filesystem::exists(manifest), manifest, ": cannot open (is '", data_dir,
             "' a folder made by `moba prepare`?)");
  const std::string text = read_regular_file(manifest, "manifest");
  nlohmann::json m;
  try {
    m = nlohmann::json::parse(text);
    const auto& t = m.at("tokenizer");
    const std::string kind = t.at("kind").get<std::string>();
    if (kind == "byte") return byte_tokenizer();
    MOBA_CHECK(kind == "bpe", manifest, ": unknown tokenizer kind '", kind, "'");
    return bpe_tokenizer_from_file(
        confined_path(data_dir, t.at("model").get<std::string>(), manifest));
  } catch (const nlohmann::json::exception& e) {
    MOBA_CHECK(false, manifest, ": not a valid manifest (", e.what(), ")");
  }
  return nullptr;
}

}  // namespace moba::data
