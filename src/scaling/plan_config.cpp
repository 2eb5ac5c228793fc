// Reading a sweep preset (sweeps/NAME.toml): its keys are declared once in sweep_schema()
// (docs/sweep.md's table is generated from it: `moba sweep --schema`); [base] is a run
// configuration in moba train's format, read through train::run_schema().
#include <algorithm>
#include <cctype>
#include <filesystem>

#include "core/error.h"
#include "core/safe_io.h"
#include "core/schema_io.h"
#include "scaling/plan.h"

namespace moba::scaling {
namespace {

// The [base] keys the ladder sets per run, and what sets them.
constexpr std::pair<const char*, const char*> kLadderSets[] = {
    {"name", "the preset's name, the size and the attention"},
    {"model.layers", "ladder.layers"},
    {"model.heads", "ladder.layers"},
    {"model.width", "ladder.head_dim x L"},
    {"model.head_dim", "ladder.head_dim"},
    {"model.kv_heads", "ladder.kv_heads"},
    {"model.mlp_hidden", "8 width / 3 rounded up to model.mlp_multiple_of"},
    {"attention.kind", "the preset's attention list"},
    {"train.steps", "ladder.tokens_per_param or ladder.tokens"},
    {"train.tokens", "ladder.tokens_per_param or ladder.tokens"},
    {"train.lr", "the [lr] rule"},
    {"train.warmup_steps", "ladder.warmup_fraction"},
    {"eval.every", "ladder.eval_points"},
    {"checkpoint.every", "ladder.eval_points"},
};

// The form before [base] (issue 15): the run's keys in top-level tables.
void refuse_old_form(const std::string& text, const std::string& origin) {
  const toml::table root = parse_toml(text, origin);
  for (const char* old : {"model", "moba", "train", "eval", "log", "data", "data_packing"})
    MOBA_CHECK(!root.contains(old), origin, ": '", old,
               "' is a key of the preset's old form. A preset now holds every run's "
               "configuration in moba train's format under [base]: data and data_packing in "
               "[base], [model] -> [base.model], [moba] -> [base.attention], [train] -> "
               "[base.train] (warmup_fraction -> ladder.warmup_fraction), [eval] -> [base.eval] "
               "(points -> ladder.eval_points), [log] -> [base.log]; see docs/sweep.md and "
               "sweeps/cpu-tiny.toml");
}

void validate(const SweepConfig& s, const std::set<std::string>& given) {
  const std::string& o = s.origin;
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
  for (const auto& [key, by] : kLadderSets)
    MOBA_CHECK(!given.count(std::string("base.") + key), o, ": base.", key,
               " is set per run by the ladder (", by, "); remove it from [base]");
  for (size_t i = 0; i < s.attention.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      MOBA_CHECK(s.attention[i] != s.attention[j], o, ": attention lists \"", s.attention[i],
                 "\" twice");
  const LadderConfig& l = s.ladder;
  for (size_t i = 1; i < l.layers.size(); ++i)
    MOBA_CHECK(l.layers[i] > l.layers[i - 1], o,
               ": ladder.layers must increase (one run per size), got ", l.layers[i - 1], " then ",
               l.layers[i]);
  MOBA_CHECK(l.head_dim % 2 == 0, o, ": ladder.head_dim must be even (RoPE), got ", l.head_dim);
  for (int64_t L : l.layers)
    MOBA_CHECK(l.kv_heads == 0 || L % l.kv_heads == 0, o, ": ladder.kv_heads (", l.kv_heads,
               ") must divide every size's heads, not ", L);
  MOBA_CHECK(l.tokens.empty() || l.tokens.size() == l.layers.size(), o, ": ladder.tokens has ",
             l.tokens.size(), " entries, ladder.layers ", l.layers.size(), "; give one per size");
  // [search]: one list of learning rates, the ratios or the values, never both; each list
  // without repeats (a repeat would train the same run twice under one name).
  const SearchConfig& g = s.search;
  if (g.given)
    MOBA_CHECK(g.lr.empty() != g.lr_multipliers.empty(), o,
               ": [search] needs exactly one of search.lr_multipliers (times the [lr] rule's "
               "value) and search.lr (absolute values), got ",
               g.lr.empty() ? "neither" : "both");
  MOBA_CHECK(g.tied_embeddings.empty() || !given.count("base.model.tied_embeddings"), o,
             ": base.model.tied_embeddings is set per run by search.tied_embeddings; remove one");
  const auto no_repeats = [&](const std::vector<double>& v, const char* key) {
    for (size_t i = 0; i < v.size(); ++i)
      for (size_t j = 0; j < i; ++j)
        MOBA_CHECK(v[i] != v[j], o, ": ", key, " lists ", v[i], " twice");
  };
  no_repeats(g.lr_multipliers, "search.lr_multipliers");
  no_repeats(g.lr, "search.lr");
  no_repeats(g.warmup_fractions, "search.warmup_fractions");
  for (size_t i = 1; i < g.tied_embeddings.size(); ++i)
    MOBA_CHECK(g.tied_embeddings[i] != g.tied_embeddings[0], o,
               ": search.tied_embeddings lists ", g.tied_embeddings[0] ? "true" : "false",
               " twice");
  // Seeds: distinct (a repeat would be the same run under one name), and the run's seed
  // comes from the list alone.
  for (size_t i = 0; i < g.seeds.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      MOBA_CHECK(g.seeds[i] != g.seeds[j], o, ": search.seeds lists ", g.seeds[i],
                 " twice; each seed is one run per size and attention");
  MOBA_CHECK(g.seeds.empty() || !given.count("base.train.seed"), o,
             ": base.train.seed is set per run by search.seeds; remove one");
  // [estimate]: with a rate per part, every part the runs have needs one (its own, or
  // flops_per_s for the rest), and flops_per_s must be needed when given.
  const ThroughputModel& e = s.estimate;
  if (e.split()) {
    const bool moba = std::find(s.attention.begin(), s.attention.end(), "moba") != s.attention.end();
    const bool full = std::find(s.attention.begin(), s.attention.end(), "full") != s.attention.end() ||
                      (moba && s.base.model.attention.full_attention_last_layers > 0);
    const std::pair<const char*, bool> parts[] = {
        {"estimate.matmul_flops_per_s", e.matmul_flops_per_s == 0},
        {"estimate.attention_flops_per_s.full", full && e.full_attention_flops_per_s == 0},
        {"estimate.attention_flops_per_s.moba", moba && e.moba_attention_flops_per_s == 0}};
    std::string missing;
    for (const auto& [key, absent] : parts)
      if (absent) missing += std::string(missing.empty() ? "" : ", ") + key;
    MOBA_CHECK(e.flops_per_s > 0 || missing.empty(), o, ": [estimate] gives a rate per part but not ",
               missing, " and no estimate.flops_per_s for the rest: those FLOPs would take no "
               "time; give ", missing.find(',') == std::string::npos ? "it" : "them",
               " or estimate.flops_per_s");
    MOBA_CHECK(e.flops_per_s == 0 || !missing.empty(), o,
               ": estimate.flops_per_s is not used: estimate.matmul_flops_per_s and "
               "estimate.attention_flops_per_s (", moba && full ? "full and moba" : moba ? "moba" : "full",
               ") give every part its rate; remove it");
  }
  // [base]'s own relations, as far as they do not depend on the ladder.
  try {
    train::check_data_packing(s.base.data, s.base.data_packing);
  } catch (const Error& e) {
    throw Error(o + ": base." + e.what());
  }
}

}  // namespace

const schema::Schema<SweepConfig>& sweep_schema() {
  using namespace schema;
  using S = SweepConfig;
  static const Schema<S> s = [] {
    std::vector<Field<S>> f = {
        MOBA_FIELD(S, "name", name, nonempty(),
                   "the sweep's name: run folders are NAME-L<size>-<attention>, and with a "
                   "[search] grid -lr<m>x-<tied|untied>-wu<fraction>, with seeds -s<seed>"),
        MOBA_FIELD(S, "runs_dir", runs_dir, any(),
                   "where the run folders go; \"\" = runs/NAME (`-o` overrides it)"),
        MOBA_FIELD(S, "attention", attention, nonempty(),
                   "the attention kinds each size trains with", {"full", "moba"}),
        MOBA_FIELD(S, "data_train_tokens", data_train_tokens, at_least(0),
                   "training tokens of base.data when its folder is not here (planning "
                   "elsewhere); 0 = unknown"),
        MOBA_FIELD(S, "data_reads_max", max_data_reads, above(0),
                   "a run reading its training data more often is refused (--force-reuse)"),
        MOBA_FIELD(S, "ladder.layers", ladder.layers, nonempty(at_least(1)),
                   "one size per entry, increasing: layers = heads = L"),
        MOBA_FIELD(S, "ladder.head_dim", ladder.head_dim, at_least(2),
                   "D, even; width = D x L"),
        MOBA_FIELD(S, "ladder.kv_heads", ladder.kv_heads, at_least(0),
                   "key/value heads of every size (divides each L); 0 = heads"),
        MOBA_FIELD(S, "ladder.tokens_per_param", ladder.tokens_per_param, within(0, 1e6, "()"),
                   "r: tokens = r x non-embedding parameters (Chinchilla: 20)"),
        MOBA_FIELD(S, "ladder.tokens", ladder.tokens, at_least(1),
                   "explicit token budgets, one per size (replaces tokens_per_param); [] = none"),
        MOBA_FIELD(S, "ladder.warmup_fraction", ladder.warmup_fraction, within(0, 1, "[)"),
                   "train.warmup_steps = round(fraction x steps)"),
        MOBA_FIELD(S, "ladder.eval_points", ladder.eval_points, at_least(1),
                   "validations (and checkpoints) per run, evenly spaced, and at the end"),
        MOBA_FIELD(S, "lr.coefficient", lr.coefficient, above(0),
                   "lr = min(max, coefficient x (6ND)^-exponent)"),
        MOBA_FIELD(S, "lr.exponent", lr.exponent, at_least(0), "see lr.coefficient"),
        MOBA_FIELD(S, "lr.max", lr.max, above(0), "the cap of the rule"),
        MOBA_FIELD(S, "search.lr_multipliers", search.lr_multipliers, above(0),
                   "learning-rate search: each (size, attention) trains once per value, at the "
                   "[lr] rule's lr times it; [] = no search over lr"),
        MOBA_FIELD(S, "search.lr", search.lr, within(0, 10, "()"),
                   "the search's absolute learning rates instead (exactly one of the two lists "
                   "in a [search] table)"),
        MOBA_FIELD(S, "search.tied_embeddings", search.tied_embeddings, any(),
                   "the search's embeddings, e.g. [true, false]; [] = base.model.tied_embeddings"),
        MOBA_FIELD(S, "search.warmup_fractions", search.warmup_fractions, within(0, 1, "[)"),
                   "the search's warm-up fractions; [] = ladder.warmup_fraction"),
        MOBA_FIELD(S, "search.seeds", search.seeds, at_least(0),
                   "training seeds, distinct: every run once per seed (train.seed), named "
                   "-s<seed>; both attention types of a seed pair up; [] = base.train.seed"),
        MOBA_FIELD(S, "estimate.flops_per_s", estimate.flops_per_s, at_least(0),
                   "executed FLOP/s of every FLOP without a rate of its own (below); 0 with "
                   "every other estimate key 0: no time estimate"),
        MOBA_FIELD(S, "estimate.seconds_per_token", estimate.seconds_per_token, at_least(0),
                   "time per token (training, or validation at a third) beside the FLOPs"),
        MOBA_FIELD(S, "estimate.matmul_flops_per_s", estimate.matmul_flops_per_s, above(0),
                   "FLOP/s of the matmuls (6 x matmul weights per token); not given: "
                   "estimate.flops_per_s"),
        MOBA_FIELD(S, "estimate.attention_flops_per_s.full", estimate.full_attention_flops_per_s,
                   above(0),
                   "FLOP/s of full attention (dense causal pairs, every dense layer); not "
                   "given: estimate.flops_per_s"),
        MOBA_FIELD(S, "estimate.attention_flops_per_s.moba", estimate.moba_attention_flops_per_s,
                   above(0),
                   "FLOP/s of MoBA attention (its attended pairs' FLOPs; the gate's time "
                   "included) at the preset's T; not given: estimate.flops_per_s"),
        MOBA_FIELD(S, "estimate.note", estimate.note, any(),
                   "where the figures come from (printed with the plan)"),
    };
    embed(f, train::run_schema().fields(), "base.", [](auto& c) -> auto& { return c.base; });
    return Schema<S>(std::move(f), "docs/sweep.md");
  }();
  return s;
}

std::string sweep_markdown() { return schema::markdown(sweep_schema(), "", "base."); }

SweepConfig parse_sweep_config(const std::string& text, const std::string& origin,
                               const std::vector<std::string>& sets) {
  refuse_old_form(text, origin);
  SweepConfig s;
  s.origin = origin;
  std::set<std::string> given;
  schema::parse(sweep_schema(), text, origin, s, &given);
  for (const std::string& set : sets) schema::apply_set(sweep_schema(), s, set, &given);
  if (s.runs_dir.empty()) s.runs_dir = "runs/" + s.name;
  s.base_sets_log_every = given.count("base.log.every") > 0;
  s.search.given = std::any_of(given.begin(), given.end(), [](const std::string& k) {
    return k.starts_with("search.") && k != "search.seeds";  // seeds alone need no lr list
  });
  validate(s, given);
  return s;
}

SweepConfig load_sweep_config(const std::string& path, const std::vector<std::string>& sets) {
  MOBA_CHECK(std::filesystem::exists(path), "cannot read the sweep preset '", path,
             "' (presets are in sweeps/)");
  return parse_sweep_config(read_regular_file(path, "sweep preset"), path, sets);
}

}  // namespace moba::scaling
