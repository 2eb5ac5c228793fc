// The trainer's view of a folder made by `moba prepare`: training batches drawn
// deterministically from (seed, step), and a fixed set of validation windows
// (docs/data.md, "Loading").
//
//   auto ds = moba::data::Dataset::open("data/prepared");   // checks every shard
//   ds.check_vocab(model_vocab);                             // error if ids would not fit
//   Batch b = ds.train_batch(seed, step, B, T, Packing::document);
//   Batch v = ds.validation_windows(T, 64);
//
// A Batch holds B rows of T + 1 tokens: inputs are tokens[b][0..T), targets
// tokens[b][1..T+1). Its cu_seqlens describe the B * T inputs as packed sequences for
// varlen attention (docs/moba.md): a fixed-length batch is {0, T, 2T, ..., B*T}; a packed
// row is cut wherever a document ends, so no query attends across documents.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/shard.h"
#include "data/split.h"

namespace moba::data {

enum class Packing {
  document,  // each row lies inside one document long enough for T + 1 tokens
             // (long-context training: every position has its full left context)
  packed,    // rows cut from the concatenated documents, boundaries in cu_seqlens
};

// "document" or "packed" (the config's spelling); throws moba::Error for anything else.
Packing packing_from_string(const std::string& s);
const char* packing_name(Packing p);

struct Batch {
  int64_t B = 0, T = 0;
  std::vector<int32_t> tokens;      // (B, T + 1)
  std::vector<int64_t> cu_seqlens;  // (sequences + 1) over the B * T inputs, row ends included
  std::vector<uint8_t> loss_mask;   // (B, T): 1 where input t and target t + 1 are in one
                                    // document (0 where the target starts the next one)
  std::vector<uint8_t> single_document;  // (B): 1 where all T + 1 tokens are in one document

  const int32_t* row(int64_t b) const { return tokens.data() + b * (T + 1); }
};

struct OpenOptions {
  bool verify = true;       // recompute shard checksums and scan ids (reads every byte)
  int64_t model_vocab = 0;  // > 0: error unless the data's vocabulary is at most this
};

// Immutable once open: every const method may be called from several threads at once.
class Dataset {
 public:
  // Reads dir/manifest.json and maps every shard it lists. Throws moba::Error naming the
  // file for a missing or invalid manifest, a corrupt or truncated shard or index, a
  // checksum mismatch, a shard whose vocabulary or dtype differs from the manifest's.
  static Dataset open(const std::string& dir, const OpenOptions& options = {});

  int64_t vocab_size() const { return vocab_size_; }
  const std::string& tokenizer_kind() const { return tokenizer_kind_; }
  const std::string& dir() const { return dir_; }
  const nlohmann::json& manifest() const { return manifest_; }
  // UTF-8 bytes per token over all documents (1.0 for byte-level tokens): bits per byte
  // = loss / ln 2 / bytes_per_token.
  double bytes_per_token() const { return bytes_per_token_; }
  int64_t documents(Split s) const { return static_cast<int64_t>(docs_[int(s)].size()); }
  int64_t tokens(Split s) const { return stream_len_[int(s)]; }
  int64_t longest_document(Split s) const;
  // Training documents with at least `len` tokens.
  int64_t documents_reaching(Split s, int64_t len) const;

  // The tokens of document i of split s (in the manifest's order of that split).
  std::vector<int32_t> document(Split s, int64_t i) const;

  // Throws moba::Error naming the manifest when the data's vocabulary exceeds model_vocab.
  void check_vocab(int64_t model_vocab) const;

  // B training rows of T + 1 tokens. Row b of step `step` depends only on (seed, step, b),
  // so a resumed run reads the same data. document: a window start drawn uniformly over
  // every position at which T + 1 tokens fit inside a training document (longer documents
  // give proportionally more windows); packed: a start drawn uniformly over the whole
  // training stream. Throws moba::Error when no training document reaches T + 1 tokens
  // (document) or the stream is shorter than T + 1 (packed).
  Batch train_batch(uint64_t seed, int64_t step, int64_t B, int64_t T, Packing mode) const;

  // `count` validation rows of T + 1 tokens, the same on every call: non-overlapping
  // windows cut at multiples of T + 1 from the start of every validation document long
  // enough, `count` of them spread evenly over all there are (single_document = 1). If
  // there are fewer, the rest are cut from the concatenated validation stream, evenly
  // spaced, with cu_seqlens at document boundaries (single_document = 0). Throws
  // moba::Error when the validation split holds fewer than T + 1 tokens. `split` = train
  // cuts the same kind of windows from the training split (`moba eval --split train`).
  Batch validation_windows(int64_t T, int64_t count, Split split = Split::val) const;

 private:
  struct Doc {
    int32_t shard;
    int64_t begin, end;  // token range in the shard
    int64_t start;       // first token's position in the split's stream
  };
  // Copies stream positions [pos, pos + out.size()) of split s into out and the index of
  // the document of each token into doc_of.
  void read_stream(Split s, int64_t pos, std::span<int32_t> out, std::span<int64_t> doc_of) const;
  // Fills one row of `b` from split s starting at stream position pos.
  void fill_row(Batch& b, int64_t row, Split s, int64_t pos) const;
  static Batch empty_batch(int64_t B, int64_t T);

  std::string dir_, manifest_path_, tokenizer_kind_;
  nlohmann::json manifest_;
  int64_t vocab_size_ = 0;
  double bytes_per_token_ = 1.0;
  std::vector<MappedShard> shards_;
  std::vector<Doc> docs_[2];      // per split, in stream order
  int64_t stream_len_[2] = {0, 0};
};

}  // namespace moba::data
