#include "train/config.h"

#include <algorithm>
#include <filesystem>

#include "core/error.h"
#include "core/safe_io.h"
#include "core/schema_io.h"

namespace moba::train {

void check_data_packing(const std::string& data, const std::string& packing) {
  MOBA_CHECK(packing == "document" || packing == "packed",
             "data_packing must be \"document\" (one document per row) or \"packed\" "
             "(documents packed into rows, cross-document targets masked), got \"",
             packing, "\"");
  MOBA_CHECK(packing == "document" || data.rfind("synthetic:", 0) != 0,
             "data_packing = \"packed\" applies to token shards; the synthetic source '", data,
             "' makes its own rows (use \"document\")");
}

const schema::Schema<RunConfig>& run_schema() {
  using namespace schema;
  using R = RunConfig;
  static const Schema<R> s = [] {
    std::vector<Field<R>> f = {
        MOBA_FIELD(R, "name", name, nonempty(), "the run's name (run.json)"),
        MOBA_FIELD(R, "data", data, nonempty(),
                   "\"synthetic:assoc_recall\" or a token-shard folder made by `moba prepare` "
                   "(`--data` overrides it)"),
        MOBA_FIELD(R, "data_packing", data_packing, any(),
                   "token-shard rows: one document per row, or documents packed (see Data)",
                   {"document", "packed"}),
    };
    embed(f, model::model_fields(), "", [](auto& c) -> auto& { return c.model; });
    std::vector<Field<R>> rest = {
        MOBA_FIELD(R, "train.batch_size", train.batch_size, at_least(1),
                   "B, rows of T tokens per micro-batch"),
        MOBA_FIELD(R, "train.grad_accum", train.grad_accum, at_least(1),
                   "micro-batches per optimizer step"),
        MOBA_FIELD(R, "train.steps", train.steps, at_least(0),
                   "optimizer steps (set exactly one of steps and tokens)"),
        MOBA_FIELD(R, "train.tokens", train.tokens, at_least(0),
                   "planned tokens, rounded up to whole steps (config.toml keeps steps)"),
        MOBA_FIELD(R, "train.lr", train.lr, within(0, 10, "()"), "peak learning rate"),
        MOBA_FIELD(R, "train.min_lr_ratio", train.min_lr_ratio, within(0, 1),
                   "the cosine decays to lr x min_lr_ratio at the last step"),
        MOBA_FIELD(R, "train.warmup_steps", train.warmup_steps, at_least(0),
                   "linear warm-up from lr / warmup_steps to lr"),
        MOBA_FIELD(R, "train.weight_decay", train.weight_decay, within(0, 10, "[)"),
                   "decoupled (AdamW), on matrices only"),
        MOBA_FIELD(R, "train.beta1", train.beta1, within(0, 1, "[)"), "AdamW's beta1"),
        MOBA_FIELD(R, "train.beta2", train.beta2, within(0, 1, "[)"), "AdamW's beta2"),
        MOBA_FIELD(R, "train.eps", train.eps, within(0, 1, "()"), "AdamW's epsilon"),
        MOBA_FIELD(R, "train.grad_clip", train.grad_clip, at_least(0),
                   "clip the global gradient norm to this; 0 = no clipping"),
        MOBA_FIELD(R, "train.seed", train.seed, at_least(0),
                   "initialisation and synthetic data"),
        MOBA_FIELD(R, "eval.every", eval.every, at_least(0),
                   "validate every N steps and at the end; 0 = at the end only"),
        MOBA_FIELD(R, "eval.windows", eval.windows, at_least(1),
                   "validation windows (synthetic data: how many to make)"),
        MOBA_FIELD(R, "eval.batch_size", eval.batch_size, at_least(1), "windows per forward"),
        MOBA_FIELD(R, "eval.bucket_size", eval.bucket_size, or_auto(at_least(1)),
                   "positions per bucket loss (<= seq_len); 0 = seq_len / 8"),
        MOBA_FIELD(R, "eval.data", eval.data, any(),
                   "validate on this prepared folder's val split (same tokenizer); \"\" = the "
                   "training data's (`--eval-data` sets it)"),
        MOBA_FIELD(R, "checkpoint.every", checkpoint_every, at_least(0),
                   "steps between checkpoints; 0 = at the end only"),
        MOBA_FIELD(R, "log.every", log_every, at_least(1), "a progress line every N steps"),
    };
    for (Field<R>& x : rest) f.push_back(std::move(x));
    return Schema<R>(std::move(f), "docs/trainer.md");
  }();
  return s;
}

RunConfig parse_config(const std::string& text, const std::string& origin,
                       const std::vector<std::string>& sets) {
  RunConfig c;
  schema::parse(run_schema(), text, origin, c);
  for (const std::string& set : sets) schema::apply_set(run_schema(), c, set);
  try {
    c.check_relations();
  } catch (const Error& e) {
    throw Error(origin + (sets.empty() ? "" : " with --set") + ": " + e.what());
  }
  return c.resolved();
}

RunConfig load_config(const std::string& path, const std::vector<std::string>& sets) {
  // A folder or a FIFO named by --config is refused, not read as an empty configuration.
  return parse_config(read_regular_file(path, "config file"), path, sets);
}

void RunConfig::validate() const {
  run_schema().check_ranges(*this);
  check_relations();
}

void RunConfig::check_relations() const {
  check_data_packing(data, data_packing);
  model.check_relations();
  MOBA_CHECK((train.steps > 0) != (train.tokens > 0),
             "set exactly one of train.steps and train.tokens (the training length)");
  MOBA_CHECK(eval.data.rfind("synthetic:", 0) != 0, "eval.data must name a folder made by "
             "`moba prepare`, got '", eval.data, "'");
  MOBA_CHECK(eval.bucket_size <= model.seq_len,
             "eval.bucket_size must be in [1, model.seq_len = ", model.seq_len,
             "] (or 0 for seq_len / 8), got ", eval.bucket_size);
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
  return schema::write(run_schema(), c,
                       "# moba train: resolved configuration (every default filled in)\n");
}

nlohmann::json config_json(const RunConfig& c) { return schema::to_json(run_schema(), c); }

std::string config_markdown() { return schema::markdown(run_schema()); }

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

RunConfig load_run_config(const std::string& run_dir, const std::vector<std::string>& sets) {
  const std::filesystem::path path = std::filesystem::path(run_dir) / "config.toml";
  RunConfig c = load_config(path.string(), sets);
  for (std::string* d : {&c.data, &c.eval.data}) {
    const std::filesystem::path data(*d);
    if (d->empty() || !is_folder_path(*d) || !data.is_relative()) continue;
    const std::filesystem::path in_run = (std::filesystem::path(run_dir) / data).lexically_normal();
    if (std::filesystem::exists(in_run) || !std::filesystem::exists(data)) *d = in_run.string();
  }
  return c;
}

std::vector<std::string> run_config_diff(const RunConfig& a, const RunConfig& b) {
  RunConfig x = a.resolved(), y = b.resolved();
  for (RunConfig* c : {&x, &y}) {
    if (is_folder_path(c->data)) c->data = absolute_normal(c->data).string();
    if (!c->eval.data.empty()) c->eval.data = absolute_normal(c->eval.data).string();
  }
  return run_schema().diff(x, y);
}

bool same_run_config(const RunConfig& a, const RunConfig& b) { return run_config_diff(a, b).empty(); }

}  // namespace moba::train
