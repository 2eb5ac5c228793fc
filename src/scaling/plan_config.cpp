// Reading a sweep preset (sweeps/NAME.toml): every key, its default and its meaning are in
// docs/sweep.md; the defaults themselves are the ones of SweepConfig (plan.h).
#include <toml++/toml.h>

#include <algorithm>
#include <cctype>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/safe_io.h"
#include "core/toml_table.h"
#include "scaling/plan.h"

namespace moba::scaling {
namespace {

// Every table of a preset is read by a TomlTable whose unknown-key message points here.
TomlTable table_reader(const toml::table* t, const std::string& origin, const char* prefix) {
  return TomlTable(t, origin, prefix, "docs/sweep.md");
}

void validate(const SweepConfig& s) {
  const std::string& o = s.origin;
  MOBA_CHECK(!s.name.empty(), o, ": name must not be empty");
  // The name becomes part of every run folder's name under --runs-dir: "../../x" or "a/b"
  // would put runs elsewhere, so only a plain file name is accepted.
  const bool plain = s.name.front() != '.' &&
                     std::all_of(s.name.begin(), s.name.end(), [](char ch) {
                       return std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' ||
                              ch == '_' || ch == '.';
                     });
  MOBA_CHECK(plain, o, ": name '", s.name,
             "' must be a plain name (letters, digits, '-', '_', '.'; not starting with '.'): it "
             "names the run folders under --runs-dir");
  MOBA_CHECK(!s.data.empty(), o,
             ": data must name a folder of token shards or a synthetic "
             "source");
  try {
    train::check_data_packing(s.data, s.data_packing);
  } catch (const Error& e) {
    throw Error(o + ": " + e.what());
  }
  MOBA_CHECK(!s.attention.empty(), o, ": attention must list at least one of \"full\", \"moba\"");
  for (size_t i = 0; i < s.attention.size(); ++i) {
    MOBA_CHECK(s.attention[i] == "full" || s.attention[i] == "moba", o,
               ": attention entries must be \"full\" or \"moba\", got \"", s.attention[i], "\"");
    for (size_t j = 0; j < i; ++j)
      MOBA_CHECK(s.attention[i] != s.attention[j], o, ": attention lists \"", s.attention[i],
                 "\" twice");
  }
  const LadderConfig& l = s.ladder;
  MOBA_CHECK(!l.layers.empty(), o, ": ladder.layers must list at least one size");
  for (size_t i = 0; i < l.layers.size(); ++i) {
    MOBA_CHECK(l.layers[i] >= 1, o, ": ladder.layers entries must be >= 1, got ", l.layers[i]);
    MOBA_CHECK(i == 0 || l.layers[i] > l.layers[i - 1], o,
               ": ladder.layers must increase (one run per size), got ", l.layers[i - 1], " then ",
               l.layers[i]);
  }
  MOBA_CHECK(l.head_dim >= 2 && l.head_dim % 2 == 0, o,
             ": ladder.head_dim must be even and >= 2, got ", l.head_dim);
  MOBA_CHECK(l.kv_heads >= 0, o, ": ladder.kv_heads must be >= 0 (0: = heads), got ", l.kv_heads);
  for (int64_t L : l.layers)
    MOBA_CHECK(l.kv_heads == 0 || L % l.kv_heads == 0, o, ": ladder.kv_heads (", l.kv_heads,
               ") must divide every size's heads, not ", L);
  MOBA_CHECK(l.tokens_per_param > 0.0 && l.tokens_per_param < 1e6, o,
             ": ladder.tokens_per_param must be in (0, 1e6), got ", l.tokens_per_param);
  MOBA_CHECK(l.tokens.empty() || l.tokens.size() == l.layers.size(), o, ": ladder.tokens has ",
             l.tokens.size(), " entries, ladder.layers ", l.layers.size(), "; give one per size");
  for (double t : l.tokens)
    MOBA_CHECK(t >= 1.0, o, ": ladder.tokens entries must be >= 1, got ", t);
  MOBA_CHECK(s.lr.coefficient > 0.0 && s.lr.exponent >= 0.0 && s.lr.max > 0.0, o,
             ": lr.coefficient and lr.max must be > 0 and lr.exponent >= 0");
  MOBA_CHECK(s.warmup_fraction >= 0.0 && s.warmup_fraction < 1.0, o,
             ": train.warmup_fraction must be in [0, 1), got ", s.warmup_fraction);
  MOBA_CHECK(s.eval_points >= 1, o, ": eval.points must be >= 1, got ", s.eval_points);
  MOBA_CHECK(s.log_every >= 0, o, ": log.every must be >= 0, got ", s.log_every);
  MOBA_CHECK(s.estimate.flops_per_s >= 0.0 && s.estimate.seconds_per_token >= 0.0, o,
             ": estimate.flops_per_s and estimate.seconds_per_token must be >= 0");
  MOBA_CHECK(s.max_data_reads > 0.0, o, ": data_reads_max must be > 0, got ", s.max_data_reads);
  MOBA_CHECK(s.data_train_tokens >= 0, o, ": data_train_tokens must be >= 0");
}

}  // namespace

SweepConfig parse_sweep_config(const std::string& text, const std::string& origin) {
  const toml::table root = parse_toml(text, origin);
  SweepConfig s;
  s.origin = origin;
  s.runs_dir = "runs/";
  {
    TomlTable k = table_reader(&root, origin, "");
    k.get("name", s.name);
    k.get("data", s.data);
    k.get("data_train_tokens", s.data_train_tokens);
    k.get("data_packing", s.data_packing);
    k.get("data_reads_max", s.max_data_reads);
    std::string runs_dir;
    k.get("runs_dir", runs_dir);
    s.runs_dir = runs_dir.empty() ? "runs/" + s.name : runs_dir;
    k.get_list("attention", s.attention);
    for (const char* t : {"ladder", "model", "moba", "lr", "train", "eval", "log", "estimate"})
      k.allow(t);
    k.finish();
  }
  {
    LadderConfig& l = s.ladder;
    TomlTable k = table_reader(toml_subtable(root, "ladder", origin), origin, "ladder.");
    k.get_list("layers", l.layers);
    k.get("head_dim", l.head_dim);
    k.get("kv_heads", l.kv_heads);
    k.get("tokens_per_param", l.tokens_per_param);
    k.get_list("tokens", l.tokens);
    k.finish();
  }
  {
    model::ModelConfig& m = s.model;
    TomlTable k = table_reader(toml_subtable(root, "model", origin), origin, "model.");
    k.get("vocab_size", m.vocab_size);
    k.get("mlp_multiple_of", m.mlp_multiple_of);
    k.get("seq_len", m.seq_len);
    k.get("tied_embeddings", m.tied_embeddings);
    k.get("rope_theta", m.rope_theta);
    k.get("norm_eps", m.norm_eps);
    k.get("init_std", m.init_std);
    k.finish();
  }
  {
    model::AttentionConfig& a = s.model.attention;
    TomlTable k = table_reader(toml_subtable(root, "moba", origin), origin, "moba.");
    k.get("block_size", a.block_size);
    k.get("top_k", a.top_k);
    k.finish();
  }
  {
    TomlTable k = table_reader(toml_subtable(root, "lr", origin), origin, "lr.");
    k.get("coefficient", s.lr.coefficient);
    k.get("exponent", s.lr.exponent);
    k.get("max", s.lr.max);
    k.finish();
  }
  {
    train::OptimConfig& t = s.train;
    TomlTable k = table_reader(toml_subtable(root, "train", origin), origin, "train.");
    k.get("batch_size", t.batch_size);
    k.get("grad_accum", t.grad_accum);
    k.get("warmup_fraction", s.warmup_fraction);
    k.get("min_lr_ratio", t.min_lr_ratio);
    k.get("weight_decay", t.weight_decay);
    k.get("beta1", t.beta1);
    k.get("beta2", t.beta2);
    k.get("eps", t.eps);
    k.get("grad_clip", t.grad_clip);
    k.get("seed", t.seed);
    k.finish();
  }
  {
    TomlTable k = table_reader(toml_subtable(root, "eval", origin), origin, "eval.");
    k.get("points", s.eval_points);
    k.get("windows", s.eval.windows);
    k.get("batch_size", s.eval.batch_size);
    k.get("bucket_size", s.eval.bucket_size);
    k.finish();
  }
  {
    TomlTable k = table_reader(toml_subtable(root, "log", origin), origin, "log.");
    k.get("every", s.log_every);
    k.finish();
  }
  {
    TomlTable k = table_reader(toml_subtable(root, "estimate", origin), origin, "estimate.");
    k.get("flops_per_s", s.estimate.flops_per_s);
    k.get("seconds_per_token", s.estimate.seconds_per_token);
    k.get("note", s.estimate.note);
    k.finish();
  }
  validate(s);
  return s;
}

SweepConfig load_sweep_config(const std::string& path) {
  MOBA_CHECK(std::filesystem::exists(path), "cannot read the sweep preset '", path,
             "' (presets are in sweeps/)");
  return parse_sweep_config(read_regular_file(path, "sweep preset"), path);
}

}  // namespace moba::scaling
