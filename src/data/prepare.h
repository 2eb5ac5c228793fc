// `moba prepare`: a folder of documents in, token shards + index + manifest out
// (docs/data.md). The library entry point; the CLI only binds options to PrepareConfig.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace moba::data {

// Every option of `moba prepare`, with its default (the CLI's --help shows these).
struct PrepareConfig {
  std::vector<std::string> inputs;          // files and folders of UTF-8 documents
  std::string out_dir = "data/prepared";    // created; manifest.json, shards, tokenizer
  std::string tokenizer = "bpe";            // "byte" (256 ids) or "bpe" (SentencePiece)
  int64_t vocab_size = 8192;                // BPE pieces in all (byte pieces included)
  std::string tokenizer_model;              // reuse this .model instead of training
  double bpe_sample_mb = 64;                // training-split text the BPE trainer sees
  double val_fraction = 0.05;               // share of documents in validation (by name)
  bool strip_gutenberg = false;             // drop Project Gutenberg header and footer
  int threads = 0;                          // 0: every core
  int64_t shard_tokens = int64_t{1} << 27;  // a new shard starts past this many tokens
  std::string dtype = "auto";               // "auto" (uint16 if vocab <= 65536), "uint16", "uint32"
  bool progress = true;                     // a progress line on stderr

  void validate() const;           // throws moba::Error naming the bad option
  nlohmann::json to_json() const;  // the resolved configuration, saved in the manifest
  int resolved_threads() const;
};

// Runs the whole preparation and returns the manifest it wrote. Prints the main options in
// one line and the progress on stderr, the summary (tables, throughput) to `log` (nullptr:
// none of it). Throws moba::Error for empty input (no file, or no non-empty text document)
// and for unreadable files.
nlohmann::json prepare(const PrepareConfig& config, std::FILE* log);

}  // namespace moba::data
