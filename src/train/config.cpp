#include "train/config.h"

#include <toml++/toml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/safe_io.h"
#include "core/toml_table.h"

namespace moba::train {
namespace {

// Every table of a run config is read by a TomlTable whose unknown-key message points here.
TomlTable table_reader(const toml::table* t, const std::string& origin, const char* prefix) {
  return TomlTable(t, origin, prefix, "docs/trainer.md");
}

// Shortest text that reads back as the same double, and as a TOML float.
std::string toml_double(double x) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, x);
  std::string s(buf, end);
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
  return s;
}

std::string quoted(const std::string& s) {
  std::ostringstream os;
  os << toml::value<std::string>(s);
  return os.str();
}

}  // namespace

void check_data_packing(const std::string& data, const std::string& packing) {
  MOBA_CHECK(packing == "document" || packing == "packed",
             "data_packing must be \"document\" (one document per row) or \"packed\" "
             "(documents packed into rows, cross-document targets masked), got \"",
             packing, "\"");
  MOBA_CHECK(packing == "document" || data.rfind("synthetic:", 0) != 0,
             "data_packing = \"packed\" applies to token shards; the synthetic source '", data,
             "' makes its own rows (use \"document\")");
}

RunConfig parse_config(const std::string& text, const std::string& origin) {
  const toml::table root = parse_toml(text, origin);
  RunConfig c;
  model::ModelConfig& m = c.model;
  {
    TomlTable r = table_reader(&root, origin, "");
    r.get("name", c.name);
    r.get("data", c.data);
    r.get("data_packing", c.data_packing);
    for (const char* t : {"model", "attention", "train", "eval", "checkpoint", "log"})
      r.allow(t);
    r.finish();
  }
  {
    TomlTable r = table_reader(toml_subtable(root, "model", origin), origin, "model.");
    r.get("vocab_size", m.vocab_size);
    r.get("width", m.width);
    r.get("layers", m.layers);
    r.get("heads", m.heads);
    r.get("kv_heads", m.kv_heads);
    r.get("head_dim", m.head_dim);
    r.get("mlp_hidden", m.mlp_hidden);
    r.get("mlp_multiple_of", m.mlp_multiple_of);
    r.get("seq_len", m.seq_len);
    r.get("tied_embeddings", m.tied_embeddings);
    r.get("rope_theta", m.rope_theta);
    r.get("norm_eps", m.norm_eps);
    r.get("init_std", m.init_std);
    r.finish();
  }
  {
    model::AttentionConfig& a = m.attention;
    TomlTable r = table_reader(toml_subtable(root, "attention", origin), origin, "attention.");
    std::string kind = a.kind == model::AttentionKind::full ? "full" : "moba";
    r.get("kind", kind);
    MOBA_CHECK(kind == "full" || kind == "moba", origin,
               ": attention.kind must be \"full\" or \"moba\", got \"", kind, "\"");
    a.kind = kind == "full" ? model::AttentionKind::full : model::AttentionKind::moba;
    r.get("block_size", a.block_size);
    r.get("top_k", a.top_k);
    r.get("full_attention_last_layers", a.full_attention_last_layers);
    r.get("moba_to_full_at", a.moba_to_full_at);
    r.finish();
  }
  {
    OptimConfig& t = c.train;
    TomlTable r = table_reader(toml_subtable(root, "train", origin), origin, "train.");
    r.get("batch_size", t.batch_size);
    r.get("grad_accum", t.grad_accum);
    r.get("steps", t.steps);
    r.get("tokens", t.tokens);
    r.get("lr", t.lr);
    r.get("min_lr_ratio", t.min_lr_ratio);
    r.get("warmup_steps", t.warmup_steps);
    r.get("weight_decay", t.weight_decay);
    r.get("beta1", t.beta1);
    r.get("beta2", t.beta2);
    r.get("eps", t.eps);
    r.get("grad_clip", t.grad_clip);
    r.get("seed", t.seed);
    r.finish();
  }
  {
    TomlTable r = table_reader(toml_subtable(root, "eval", origin), origin, "eval.");
    r.get("every", c.eval.every);
    r.get("windows", c.eval.windows);
    r.get("batch_size", c.eval.batch_size);
    r.get("bucket_size", c.eval.bucket_size);
    r.get("data", c.eval.data);
    r.finish();
  }
  {
    TomlTable r = table_reader(toml_subtable(root, "checkpoint", origin), origin, "checkpoint.");
    r.get("every", c.checkpoint_every);
    r.finish();
  }
  {
    TomlTable r = table_reader(toml_subtable(root, "log", origin), origin, "log.");
    r.get("every", c.log_every);
    r.finish();
  }
  try {
    c.validate();
  } catch (const Error& e) {
    throw Error(origin + ": " + e.what());
  }
  return c.resolved();
}

RunConfig load_config(const std::string& path) {
  // A folder or a FIFO named by --config is refused, not read as an empty configuration.
  return parse_config(read_regular_file(path, "config file"), path);
}

void RunConfig::validate() const {
  MOBA_CHECK(!name.empty(), "name must not be empty");
  MOBA_CHECK(!data.empty(), "data must not be empty");
  check_data_packing(data, data_packing);
  model.validate();
  const OptimConfig& t = train;
  MOBA_CHECK(t.batch_size >= 1, "train.batch_size must be >= 1, got ", t.batch_size);
  MOBA_CHECK(t.grad_accum >= 1, "train.grad_accum must be >= 1, got ", t.grad_accum);
  MOBA_CHECK(t.steps >= 0, "train.steps must be >= 1, got ", t.steps);
  MOBA_CHECK(t.tokens >= 0, "train.tokens must be >= 1, got ", t.tokens);
  MOBA_CHECK((t.steps > 0) != (t.tokens > 0),
             "set exactly one of train.steps and train.tokens (the training length)");
  MOBA_CHECK(std::isfinite(t.lr) && t.lr > 0.0 && t.lr < 10.0, "train.lr must be in (0, 10), got ",
             t.lr);
  MOBA_CHECK(t.min_lr_ratio >= 0.0 && t.min_lr_ratio <= 1.0,
             "train.min_lr_ratio must be in [0, 1], got ", t.min_lr_ratio);
  MOBA_CHECK(t.warmup_steps >= 0, "train.warmup_steps must be >= 0, got ", t.warmup_steps);
  MOBA_CHECK(t.weight_decay >= 0.0 && t.weight_decay < 10.0,
             "train.weight_decay must be in [0, 10), got ", t.weight_decay);
  MOBA_CHECK(t.beta1 >= 0.0 && t.beta1 < 1.0, "train.beta1 must be in [0, 1), got ", t.beta1);
  MOBA_CHECK(t.beta2 >= 0.0 && t.beta2 < 1.0, "train.beta2 must be in [0, 1), got ", t.beta2);
  MOBA_CHECK(t.eps > 0.0 && t.eps < 1.0, "train.eps must be in (0, 1), got ", t.eps);
  MOBA_CHECK(std::isfinite(t.grad_clip) && t.grad_clip >= 0.0,
             "train.grad_clip must be >= 0 (0: no clipping), got ", t.grad_clip);
  MOBA_CHECK(eval.every >= 0, "eval.every must be >= 0, got ", eval.every);
  MOBA_CHECK(eval.windows >= 1, "eval.windows must be >= 1, got ", eval.windows);
  MOBA_CHECK(eval.data.rfind("synthetic:", 0) != 0, "eval.data must name a folder made by "
             "`moba prepare`, got '", eval.data, "'");
  MOBA_CHECK(eval.batch_size >= 1, "eval.batch_size must be >= 1, got ", eval.batch_size);
  MOBA_CHECK(eval.bucket_size >= 0 && eval.bucket_size <= model.seq_len,
             "eval.bucket_size must be in [1, model.seq_len = ", model.seq_len,
             "] (or 0 for seq_len / 8), got ", eval.bucket_size);
  MOBA_CHECK(checkpoint_every >= 0, "checkpoint.every must be >= 0, got ", checkpoint_every);
  MOBA_CHECK(log_every >= 1, "log.every must be >= 1, got ", log_every);
}

RunConfig RunConfig::resolved() const {
  RunConfig c = *this;
  c.model = model.resolved();
  const int64_t per_step = c.train.tokens_per_step(c.model.seq_len);
  if (c.train.steps == 0 && c.train.tokens > 0)
    c.train.steps = (c.train.tokens + per_step - 1) / per_step;
  c.train.tokens = 0;  // the resolved form keeps steps only; tokens_planned() derives it
  if (c.eval.bucket_size == 0) c.eval.bucket_size = std::max<int64_t>(1, c.model.seq_len / 8);
  return c;
}

std::string to_toml(const RunConfig& c) {
  const model::ModelConfig& m = c.model;
  const model::AttentionConfig& a = m.attention;
  const OptimConfig& t = c.train;
  std::ostringstream os;
  os << "# moba train: resolved configuration (every default filled in)\n"
     << "name = " << quoted(c.name) << "\n"
     << "data = " << quoted(c.data) << "\n"
     << (c.data_packing == "document" ? "" : "data_packing = " + quoted(c.data_packing) + "\n")
     << "\n"
     << "[model]\n"
     << "vocab_size = " << m.vocab_size << "\n"
     << "width = " << m.width << "\n"
     << "layers = " << m.layers << "\n"
     << "heads = " << m.heads << "\n"
     << "kv_heads = " << m.kv_heads << "\n"
     << "head_dim = " << m.head_dim << "\n"
     << "mlp_hidden = " << m.mlp_hidden << "\n"
     << "mlp_multiple_of = " << m.mlp_multiple_of << "\n"
     << "seq_len = " << m.seq_len << "\n"
     << "tied_embeddings = " << (m.tied_embeddings ? "true" : "false") << "\n"
     << "rope_theta = " << toml_double(m.rope_theta) << "\n"
     << "norm_eps = " << toml_double(m.norm_eps) << "\n"
     << "init_std = " << toml_double(m.init_std) << "\n\n"
     << "[attention]\n"
     << "kind = \"" << (a.kind == model::AttentionKind::full ? "full" : "moba") << "\"\n"
     << "block_size = " << a.block_size << "\n"
     << "top_k = " << a.top_k << "\n"
     << "full_attention_last_layers = " << a.full_attention_last_layers << "\n"
     << "moba_to_full_at = " << toml_double(a.moba_to_full_at) << "\n\n"
     << "[train]\n"
     << "batch_size = " << t.batch_size << "\n"
     << "grad_accum = " << t.grad_accum << "\n"
     << "steps = " << t.steps << "  # " << c.tokens_planned() << " tokens\n"
     << "lr = " << toml_double(t.lr) << "\n"
     << "min_lr_ratio = " << toml_double(t.min_lr_ratio) << "\n"
     << "warmup_steps = " << t.warmup_steps << "\n"
     << "weight_decay = " << toml_double(t.weight_decay) << "\n"
     << "beta1 = " << toml_double(t.beta1) << "\n"
     << "beta2 = " << toml_double(t.beta2) << "\n"
     << "eps = " << toml_double(t.eps) << "\n"
     << "grad_clip = " << toml_double(t.grad_clip) << "\n"
     << "seed = " << t.seed << "\n\n"
     << "[eval]\n"
     << "every = " << c.eval.every << "\n"
     << "windows = " << c.eval.windows << "\n"
     << "batch_size = " << c.eval.batch_size << "\n"
     << "bucket_size = " << c.eval.bucket_size << "\n"
     // Written only when set, so that runs made before the key existed resume unchanged.
     << (c.eval.data.empty() ? "" : "data = " + quoted(c.eval.data) + "\n") << "\n"
     << "[checkpoint]\n"
     << "every = " << c.checkpoint_every << "\n\n"
     << "[log]\n"
     << "every = " << c.log_every << "\n";
  return os.str();
}

namespace {

bool is_folder_path(const std::string& data) { return data.rfind("synthetic:", 0) != 0; }

std::filesystem::path absolute_normal(const std::filesystem::path& p) {
  return std::filesystem::absolute(p).lexically_normal();
}

}  // namespace

// Relative data folders (data, eval.data) are written relative to the run folder.
std::string run_config_text(const RunConfig& resolved, const std::string& run_dir) {
  RunConfig c = resolved;
  for (std::string* d : {&c.data, &c.eval.data})
    if (!d->empty() && is_folder_path(*d) && std::filesystem::path(*d).is_relative())
      *d = absolute_normal(*d).lexically_relative(absolute_normal(run_dir)).string();
  return to_toml(c);
}

RunConfig load_run_config(const std::string& run_dir) {
  const std::filesystem::path path = std::filesystem::path(run_dir) / "config.toml";
  RunConfig c = load_config(path.string());
  for (std::string* d : {&c.data, &c.eval.data}) {
    const std::filesystem::path data(*d);
    if (d->empty() || !is_folder_path(*d) || !data.is_relative()) continue;
    const std::filesystem::path in_run = (std::filesystem::path(run_dir) / data).lexically_normal();
    if (std::filesystem::exists(in_run) || !std::filesystem::exists(data)) *d = in_run.string();
  }
  return c;
}

bool same_run_config(const RunConfig& a, const RunConfig& b) {
  RunConfig x = a.resolved(), y = b.resolved();
  for (RunConfig* c : {&x, &y}) {
    if (is_folder_path(c->data)) c->data = absolute_normal(c->data).string();
    if (!c->eval.data.empty()) c->eval.data = absolute_normal(c->eval.data).string();
  }
  return to_toml(x) == to_toml(y);
}

}  // namespace moba::train
