// moba prepare: tokenizes a folder of documents into token shards for training
// (docs/data.md). The options are data::PrepareConfig's fields, defaults and all.
#include <cstdio>

#include "cli/commands.h"
#include "data/prepare.h"

namespace moba::cli {

void add_prepare(CLI::App& app) {
  static data::PrepareConfig o;  // defaults live in PrepareConfig, CLI11 prints them in --help
  CLI::App* cmd = app.add_subcommand(
      "prepare", "Tokenize files/folders of text documents into token shards + manifest");
  cmd->add_option("inputs", o.inputs, "Files or folders of UTF-8 text, one document per file")
      ->required();
  cmd->add_option("--out,-o", o.out_dir, "Output folder (new, empty, or a previous output)")
      ->capture_default_str();
  cmd->add_option("--tokenizer", o.tokenizer, "byte (256 ids) or bpe (SentencePiece, trained)")
      ->capture_default_str();
  cmd->add_option("--vocab-size", o.vocab_size, "BPE vocabulary size (byte pieces included)")
      ->capture_default_str();
  cmd->add_option("--tokenizer-model", o.tokenizer_model,
                  "Reuse this SentencePiece .model instead of training one");
  cmd->add_option("--bpe-sample-mb", o.bpe_sample_mb,
                  "MB of training-split text (sampled by line) the BPE trainer sees")
      ->capture_default_str();
  cmd->add_option("--val-fraction", o.val_fraction,
                  "Share of documents in validation (decided by a hash of the name)")
      ->capture_default_str();
  cmd->add_flag("--strip-gutenberg", o.strip_gutenberg,
                "Remove Project Gutenberg headers and footers (as PG-19)");
  cmd->add_option("--threads", o.threads, "Worker threads (0: every core)")->capture_default_str();
  cmd->add_option("--shard-tokens", o.shard_tokens, "Start a new shard past this many tokens")
      ->capture_default_str();
  cmd->add_option("--dtype", o.dtype, "Token id type: auto, uint16 or uint32")->capture_default_str();
  cmd->add_flag("!--no-progress", o.progress, "No progress line on stderr");
  cmd->callback([] { data::prepare(o, stdout); });
}

}  // namespace moba::cli
