// A training run's configuration: the TOML file `moba train --config` reads. Every key is
// declared once, in run_schema() (key, member, type, range, default, one doc line); reading,
// `--set key=value`, config.toml, run.json's "config", the comparison on resume and the
// table in docs/trainer.md (`moba train --schema`) all derive from it. configs/ holds
// examples.
//
//   name = "..."  data = "synthetic:assoc_recall"  data_packing = "document"
//   [model] [attention] [train] [eval] [checkpoint] [log]
//
// Reading validates everything once, with errors that name the file and the key:
// unknown keys, wrong types and out-of-range values all stop the run before it starts.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/schema.h"
#include "model/config.h"

namespace moba::train {

struct OptimConfig {
  int64_t batch_size = 8;     // B rows of T tokens per micro-batch
  int64_t grad_accum = 1;     // micro-batches per optimizer step
  int64_t steps = 0;          // optimizer steps; 0 = from `tokens`
  int64_t tokens = 0;         // planned training tokens (rounded up to whole steps); 0 = from steps
  double lr = 1e-3;           // peak learning rate
  double min_lr_ratio = 0.1;  // the cosine decays to lr * min_lr_ratio at the last step
  int64_t warmup_steps = 0;   // linear warm-up from lr / warmup_steps to lr
  double weight_decay = 0.1;  // decoupled (AdamW), on matrices only
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double grad_clip = 1.0;  // clip the global gradient norm to this; 0 = no clipping
  uint64_t seed = 1;       // initialisation and synthetic data

  int64_t tokens_per_step(int64_t T) const { return batch_size * grad_accum * T; }
};

struct EvalConfig {
  int64_t every = 0;        // validate every N steps (and at the end); 0 = at the end only
  int64_t windows = 16;     // validation windows (synthetic data: how many to make)
  int64_t batch_size = 8;   // windows per forward
  int64_t bucket_size = 0;  // positions per bucket loss; 0 = seq_len / 8 (at least 1)
  // Validate on the val split of this prepared folder (text the training never saw, same
  // tokenizer); "" = the training data's own validation split.
  std::string data;
};

struct RunConfig {
  std::string name = "run";
  // Where tokens come from: "synthetic:assoc_recall", or a folder of token shards made by
  // `moba prepare` (src/train/shard_source.h). `moba train --data DIR` overrides it.
  std::string data = "synthetic:assoc_recall";
  // How token-shard rows are cut (src/train/shard_source.h): "document" (a window inside
  // one document long enough) or "packed" (consecutive documents of the training stream,
  // cut at document ends, targets that start the next document masked out of the loss).
  // Synthetic sources make their own rows: they take "document" only.
  std::string data_packing = "document";
  model::ModelConfig model;
  OptimConfig train;
  EvalConfig eval;
  int64_t checkpoint_every = 0;  // [checkpoint] every: steps; 0 = at the end only
  int64_t log_every = 1;         // [log] every: progress line every N steps

  // Fills every automatic value (head_dim, kv_heads, mlp_hidden, steps/tokens,
  // bucket_size). validate() must pass first.
  RunConfig resolved() const;
  // Throws moba::Error naming the key: every field's range, then check_relations(). For
  // configurations built in code; the TOML reader checks each range as it reads the key.
  void validate() const;
  // The checks relating keys: exactly one of train.steps and train.tokens,
  // eval.bucket_size <= model.seq_len, data_packing against data, the model's own.
  void check_relations() const;
  int64_t tokens_planned() const { return train.steps * train.tokens_per_step(model.seq_len); }
};

// Throws moba::Error unless "packed" goes with token shards (a synthetic `data` source makes
// its own rows: "document" only). `--data` may change the source after reading.
void check_data_packing(const std::string& data, const std::string& packing);

// Every key of a run configuration.
const schema::Schema<RunConfig>& run_schema();

// Reads and validates a TOML file, then applies `sets` ("model.width=512", `moba train
// --set`, type- and range-checked like the file; an unknown key is an error suggesting the
// nearest); errors name `path` (or --set), the key and the problem. Returns it resolved.
RunConfig load_config(const std::string& path, const std::vector<std::string>& sets = {});
// Same, from text (tests); `origin` names it in messages.
RunConfig parse_config(const std::string& toml_text, const std::string& origin,
                       const std::vector<std::string>& sets = {});
// The resolved configuration as TOML, every key written: what config.toml holds and what
// the run prints at start. parse_config(to_toml(c)) gives c back.
std::string to_toml(const RunConfig& resolved);
// Every key as nested JSON ({"model": {"width": ...}, ...}): run.json's "config".
nlohmann::json config_json(const RunConfig& resolved);
// The Markdown table of every key (docs/trainer.md holds it; tests compare).
std::string config_markdown();

// A run folder's config.toml, and reading it back. Runs can be moved: a relative `data`
// path (relative to the current folder when given) is stored relative to the run folder, and
// load_run_config resolves it against the run folder again, so a run moved together with its
// data, or resumed from another folder, finds the same shards. Absolute paths and
// "synthetic:..." are kept as they are. A run written before this rule (data relative to the
// folder moba ran in) still loads when the path exists from the current folder.
// `sets` as for load_config.
std::string run_config_text(const RunConfig& resolved, const std::string& run_dir);
RunConfig load_run_config(const std::string& run_dir, const std::vector<std::string>& sets = {});
// How two configurations of a run differ, once both are resolved and their data paths made
// absolute: "model.width: 256 -> 512" per key (empty: the same run). Resume and the sweep
// compare parsed configurations this way, never TOML text.
std::vector<std::string> run_config_diff(const RunConfig& before, const RunConfig& now);
bool same_run_config(const RunConfig& a, const RunConfig& b);

}  // namespace moba::train
