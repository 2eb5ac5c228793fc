// Tokenizers: byte-level (256 ids, the byte's value, nothing to train) and SentencePiece
// BPE trained on the corpus. Both are lossless on valid UTF-8: decode(encode(s)) == s
// (for BPE: as long as s holds no U+2581, SentencePiece's own space symbol).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace moba::data {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::string kind() const = 0;      // "byte" or "bpe"
  virtual int64_t vocab_size() const = 0;    // ids are in [0, vocab_size)
  // Appends the ids of `text` to `ids`. Thread-safe (const).
  virtual void encode(std::string_view text, std::vector<int32_t>& ids) const = 0;
  virtual std::string decode(std::span<const int32_t> ids) const = 0;

  std::vector<int32_t> encode(std::string_view text) const {
    std::vector<int32_t> ids;
    encode(text, ids);
    return ids;
  }

  // The tokenizer of a prepared data folder, as its manifest names it ("byte", or "bpe"
  // with the SentencePiece model file tokenizer.model beside the manifest).
  static std::unique_ptr<Tokenizer> open(const std::string& data_dir);
};

std::unique_ptr<Tokenizer> byte_tokenizer();

// True when this build links SentencePiece (BPE available).
bool have_sentencepiece();

// The most bytes one call to SentencePiece's encoder sees; longer lines are cut (see
// tokenizer_bpe.cpp). A bound on the encoder's memory: about 220 bytes per input byte.
inline constexpr size_t kBpeChunkBytes = 4096;

// A SentencePiece model from its serialized form (the bytes of a .model file).
// `word_cache` encodes word by word through a per-thread cache (same ids, faster);
// false calls SentencePiece on whole lines (the reference the tests compare against).
std::unique_ptr<Tokenizer> bpe_tokenizer(const std::string& serialized_model,
                                         bool word_cache = true);
std::unique_ptr<Tokenizer> bpe_tokenizer_from_file(const std::string& model_path);

struct BpeTrainOptions {
  int64_t vocab_size = 8192;  // pieces in all: <unk>, 256 byte pieces, learned merges
  int threads = 1;
  bool verbose = false;       // SentencePiece's own log on stderr
};

// Trains a byte-fallback BPE model on the lines that `next_line` yields (it returns false
// when there are no more) and returns the serialized model. Settings (docs/data.md):
// identity normalisation, no dummy prefix, white space kept as is, digits split,
// <unk> = 0, no BOS/EOS/PAD, byte fallback so that every string can be encoded.
std::string train_bpe(const std::function<bool(std::string&)>& next_line,
                      const BpeTrainOptions& options);

}  // namespace moba::data
