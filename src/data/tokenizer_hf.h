// Hugging Face tokenizer files (tokenizer.json for the `tokenizers` library, and
// tokenizer_config.json for transformers' AutoTokenizer) that reproduce our tokenizers'
// ids exactly: the byte-level tokenizer (id = byte value) and SentencePiece BPE models
// trained as `moba prepare` trains them (docs/hf.md). No SentencePiece library is needed:
// the .model file is read as the protobuf it is.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace moba::data {

// What a SentencePiece .model file holds, as far as conversion needs it.
struct SpModel {
  enum PieceType { normal = 1, unknown = 2, control = 3, user_defined = 4, unused = 5, byte = 6 };
  struct Piece {
    std::string piece;
    float score = 0.0f;
    int type = normal;
  };
  std::vector<Piece> pieces;     // id = index
  int model_type = 1;            // 1 unigram, 2 BPE, 3 word, 4 char (TrainerSpec.model_type)
  std::string normalizer = "nmt_nfkc";  // NormalizerSpec.name
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = true;
  bool escape_whitespaces = true;
};

// Parses the serialized ModelProto; `where` names the file in errors (moba::Error).
SpModel parse_sentencepiece_model(const std::string& serialized, const std::string& where);

// tokenizer.json of the byte-level tokenizer: ByteLevel pre-tokenizer (no regex split, no
// prefix space), a BPE model of the 256 byte symbols with id = byte value and no merges.
nlohmann::json hf_byte_tokenizer_json();

// tokenizer.json of a SentencePiece BPE model: spaces replaced by U+2581, a BPE model
// with SentencePiece's ids, merges ranked by the merged piece's score, byte fallback.
// Refuses (moba::Error naming the setting) models this conversion would not reproduce:
// not BPE, a normalization other than identity, add_dummy_prefix, remove_extra_whitespaces.
nlohmann::json hf_bpe_tokenizer_json(const SpModel& model, const std::string& where);

// tokenizer_config.json: the fast tokenizer class, no BOS/EOS added, `max_length` as
// model_max_length; unk_token when the vocabulary has one.
nlohmann::json hf_tokenizer_config(const std::string& unk_token, int64_t max_length);

// Writes tokenizer.json and tokenizer_config.json (and, for BPE, a copy of tokenizer.model)
// for the tokenizer of the prepared data folder `data_dir` into out_dir. Returns the kind
// ("byte" or "bpe").
std::string write_hf_tokenizer(const std::string& data_dir, const std::string& out_dir,
                               int64_t max_length);

}  // namespace moba::data
