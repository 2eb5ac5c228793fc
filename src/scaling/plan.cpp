// The planner: run configurations, parameter and FLOP counts, estimates (plan.h).
#include "scaling/plan.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "attention/stats.h"
#include "core/error.h"
#include "core/safe_io.h"
#include "train/memory.h"
#include "train/progress.h"
#include "train/supports.h"

namespace moba::scaling {
namespace fs = std::filesystem;
namespace {

// "812", "12.3k", "4.56M", "7.89B", "1.20T".
std::string si(double x) {
  char buf[32];
  const char* unit[] = {"", "k", "M", "B", "T", "P"};
  int u = 0;
  while (std::fabs(x) >= 1000.0 && u < 5) x /= 1000.0, ++u;
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f%s" : (x < 10 ? "%.2f%s" : "%.1f%s"), x, unit[u]);
  return buf;
}

std::string bytes(double b) {
  char buf[32];
  if (b < 1024.0 * 1024 * 1024)
    std::snprintf(buf, sizeof buf, "%.0f MiB", b / (1024.0 * 1024));
  else
    std::snprintf(buf, sizeof buf, "%.1f GiB", b / (1024.0 * 1024 * 1024));
  return buf;
}

constexpr double kPflopsDay = 1e15 * 86400.0;

// A search run's grid values as planner table cells: "0.50 | untied | 0.1 (49 steps) | ".
std::string search_cells(const PlannedRun& r) {
  char buf[128];
  std::snprintf(buf, sizeof buf, "%.2f | %s | %g (%lld steps) | ",
                r.config.train.lr / r.lr_rule, r.config.model.tied_embeddings ? "tied" : "untied",
                r.warmup_fraction, static_cast<long long>(r.config.train.warmup_steps));
  return buf;
}

// The data's training tokens and vocabulary from its manifest, without opening shards.
struct DataFacts {
  int64_t train_tokens = 0, vocab_size = 0;
  std::string note;
};

DataFacts data_facts(const SweepConfig& s, const std::string& data) {
  DataFacts d;
  if (data.rfind("synthetic:", 0) == 0) {
    d.note = data + ": generated on the fly, never re-read";
    return d;
  }
  const fs::path manifest = fs::path(data) / "manifest.json";
  if (fs::exists(manifest)) {
    const std::string text = read_regular_file(manifest.string(), "manifest");
    try {
      const nlohmann::json m = nlohmann::json::parse(text);
      d.train_tokens = m.at("stats").at("train").at("tokens").get<int64_t>();
      d.vocab_size = m.at("vocab_size").get<int64_t>();
    } catch (const nlohmann::json::exception& e) {
      MOBA_CHECK(false, manifest.string(), ": not a valid manifest (", e.what(), ")");
    }
    d.note = data + ": " + si(static_cast<double>(d.train_tokens)) + " training tokens (" +
             manifest.string() + ")";
  } else if (s.data_train_tokens > 0) {
    d.train_tokens = s.data_train_tokens;
    d.note = data + " (not prepared here): " + si(static_cast<double>(d.train_tokens)) +
             " training tokens, the preset's data_train_tokens";
  } else {
    d.note = data +
             " (not prepared here, and the preset gives no data_train_tokens): data "
             "reads unknown";
  }
  return d;
}

}  // namespace

double dense_pairs_per_sequence(int64_t T, int64_t heads) {
  const double t = static_cast<double>(T);
  return t * (t + 1.0) / 2.0 * static_cast<double>(heads);
}

double moba_pairs_per_sequence(int64_t T, int64_t heads, int64_t S, int64_t K) {
  double pairs = 0.0;
  for (int64_t c = 0; c * S < T; ++c) {
    const int64_t begin = c * S, n = std::min(S, T - begin);  // queries of block c
    const double own = static_cast<double>(n) * static_cast<double>(n + 1) / 2.0;
    // Block c's queries see min(c, K - 1) whole past blocks (all of them while c < K).
    pairs += own + static_cast<double>(n) * static_cast<double>(std::min(c, K - 1) * S);
  }
  return pairs * static_cast<double>(heads);
}

namespace {

// One layer's attention FLOPs (forward and backward) per token of a resolved config: MoBA's
// attended pairs where the layer uses MoBA, else the dense causal pairs.
double layer_attention_flops_per_token(const model::ModelConfig& c, int64_t layer) {
  const double pairs =
      model::layer_uses_moba(c, layer, true)
          ? moba_pairs_per_sequence(c.seq_len, c.heads, c.attention.block_size, c.attention.top_k)
          : dense_pairs_per_sequence(c.seq_len, c.heads);
  return attn::attention_fwd_bwd_flops(pairs, c.head_dim) / static_cast<double>(c.seq_len);
}

}  // namespace

double exec_flops_per_token(const model::ModelConfig& cfg0) {
  const model::ModelConfig c = cfg0.resolved();
  double attention = 0.0;
  for (int64_t layer = 0; layer < c.layers; ++layer)
    attention += layer_attention_flops_per_token(c, layer);
  return model::matmul_flops_per_token(c) + attention;
}

ExecFlops exec_flops_parts(const model::ModelConfig& cfg0) {
  const model::ModelConfig c = cfg0.resolved();
  ExecFlops f;
  f.matmul = model::matmul_flops_per_token(c);
  for (int64_t layer = 0; layer < c.layers; ++layer)
    (model::layer_uses_moba(c, layer, true) ? f.moba_attention : f.full_attention) +=
        layer_attention_flops_per_token(c, layer);
  return f;
}

TimeParts estimate_seconds(const ThroughputModel& m, const ExecFlops& per_token,
                           double token_equivalents) {
  // A part whose rate is 0 (no rate given and no flops_per_s) takes no time; the preset's
  // validation refuses that for the parts its runs have.
  const auto at = [&](double flops, double rate) {
    return rate > 0 ? token_equivalents * flops / rate : 0.0;
  };
  TimeParts t;
  t.per_token = token_equivalents * m.seconds_per_token;
  t.matmul = at(per_token.matmul, m.matmul_rate());
  t.full_attention = at(per_token.full_attention, m.full_attention_rate());
  t.moba_attention = at(per_token.moba_attention, m.moba_attention_rate());
  return t;
}

size_t SearchConfig::points() const {
  const auto n = [](size_t k) { return std::max<size_t>(1, k); };
  return n(lr.size() + lr_multipliers.size()) * n(tied_embeddings.size()) *
         n(warmup_fractions.size());
}

std::string search_suffix(const SearchConfig& g, double lr_value, bool tied,
                          double warmup_fraction) {
  if (g.points() <= 1) return "";  // the plain ladder name: existing run folders stay valid
  char buf[96];
  std::snprintf(buf, sizeof buf, g.lr.empty() ? "-lr%gx-%s-wu%g" : "-lr%g-%s-wu%g", lr_value,
                tied ? "tied" : "untied", warmup_fraction);
  return buf;
}

std::string seed_suffix(const SearchConfig& g, int64_t seed) {
  return g.seeds.empty() ? "" : "-s" + std::to_string(seed);
}

double planned_lr(const LrRule& rule, double params, double tokens) {
  const double c = 6.0 * params * tokens;
  return std::min(rule.max, rule.coefficient * std::pow(c, -rule.exponent));
}

double memory_estimate(const model::ModelConfig& cfg, int64_t batch_size) {
  return train::estimate_memory(cfg, batch_size, "cuda").total();  // the trainer's planner
}

double Plan::max_data_reads() const {
  double m = -1;
  for (const PlannedRun& r : runs) m = std::max(m, r.data_reads);
  return m;
}

double Plan::total_seconds() const {
  double t = 0;
  for (const PlannedRun& r : runs) {
    if (r.seconds < 0) return -1;
    t += r.seconds;
  }
  return t;
}

Plan make_plan(const SweepConfig& s, const std::string& data_override,
               const std::string& eval_data) {
  Plan plan;
  plan.sweep = s;
  if (!data_override.empty()) plan.sweep.base.data = data_override;
  const std::string& data = plan.sweep.base.data;
  const DataFacts facts = data_facts(s, data);
  plan.data_note = facts.note;
  plan.data_train_tokens = facts.train_tokens;
  MOBA_CHECK(facts.vocab_size <= s.base.model.vocab_size, s.origin,
             ": base.model.vocab_size = ", s.base.model.vocab_size,
             " is smaller than the data's vocabulary (", facts.vocab_size, ", ", data, ")");
  const bool synthetic = data.rfind("synthetic:", 0) == 0;
  const LadderConfig& l = s.ladder;
  const SearchConfig& g = s.search;
  // The grid's lists, each defaulting to the ladder's (or [base]'s) single value.
  const bool absolute = !g.lr.empty();
  const std::vector<double> lrs = absolute ? g.lr
                                  : g.lr_multipliers.empty() ? std::vector<double>{1.0}
                                                             : g.lr_multipliers;
  const std::vector<bool> tieds = g.tied_embeddings.empty()
                                      ? std::vector<bool>{s.base.model.tied_embeddings}
                                      : g.tied_embeddings;
  const std::vector<double> warmups =
      g.warmup_fractions.empty() ? std::vector<double>{l.warmup_fraction} : g.warmup_fractions;
  // The grid of one (size, attention): tied before untied, then warm-up, then lr.
  struct Point {
    bool tied;
    double warmup, lr;
  };
  std::vector<Point> grid;
  for (const bool tied : tieds)
    for (const double warmup : warmups)
      for (const double lr : lrs) grid.push_back({tied, warmup, lr});
  // The seeds: the list's, else [base]'s one (no name suffix then).
  const std::vector<int64_t> seeds =
      g.seeds.empty() ? std::vector<int64_t>{static_cast<int64_t>(s.base.train.seed)} : g.seeds;
  // (seed, attention) in the plan's order: both attention types of a seed adjacent.
  std::vector<std::pair<int64_t, std::string>> slots;
  for (const int64_t seed : seeds)
    for (const std::string& kind : s.attention) slots.emplace_back(seed, kind);
  for (size_t i = 0; i < l.layers.size(); ++i) {
    const int64_t L = l.layers[i];
    for (const auto& [seed, kind] : slots) {
      for (const Point& pt : grid) {
        // [base], then what the ladder sets (plan.h), then the grid point and the seed.
        train::RunConfig c = s.base;
        c.name = s.name + "-L" + std::to_string(L) + "-" + kind +
                 search_suffix(g, pt.lr, pt.tied, pt.warmup) + seed_suffix(g, seed);
        c.train.seed = static_cast<uint64_t>(seed);
        c.data = data;
        c.model.layers = L;
        c.model.heads = L;
        c.model.kv_heads = l.kv_heads;
        c.model.head_dim = l.head_dim;
        c.model.width = l.head_dim * L;
        c.model.mlp_hidden = 0;
        c.model.tied_embeddings = pt.tied;
        c.model.attention.kind = model::parse_attention_kind(kind, "attention");
        const model::ParamCounts pc = model::param_counts(c.model);
        const double target = l.tokens.empty()
                                  ? l.tokens_per_param * static_cast<double>(pc.non_embedding)
                                  : l.tokens[i];
        const double per_step = static_cast<double>(c.train.tokens_per_step(c.model.seq_len));
        c.train.steps = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(target / per_step)));
        c.train.tokens = 0;
        const double tokens = static_cast<double>(c.train.steps) * per_step;
        const double lr_rule = planned_lr(s.lr, static_cast<double>(pc.non_embedding), tokens);
        c.train.lr = absolute ? pt.lr : lr_rule * pt.lr;
        c.train.warmup_steps = std::llround(pt.warmup * static_cast<double>(c.train.steps));
        if (!eval_data.empty()) c.eval.data = eval_data;
        c.eval.every = std::max<int64_t>(1, c.train.steps / l.eval_points);
        c.checkpoint_every = c.eval.every;
        if (!s.base_sets_log_every) c.log_every = std::max<int64_t>(1, c.train.steps / 10);
        try {
          c.validate();  // the run as the ladder made it: the one check of its configuration
        } catch (const Error& e) {
          MOBA_CHECK(false, s.origin, ": size L = ", L, " (", c.name, "): ", e.what());
        }
        PlannedRun r;
        r.config = c.resolved();
        r.attention = kind;
        r.size = static_cast<int64_t>(i);
        r.params = pc;
        r.tokens = tokens;
        r.flops_6nd = 6.0 * static_cast<double>(pc.non_embedding) * tokens;
        r.exec_per_token = exec_flops_per_token(r.config.model);
        r.exec_parts = exec_flops_parts(r.config.model);
        r.flops_exec = r.exec_per_token * tokens;
        const model::ModelConfig& m = r.config.model;
        r.attention_density = kind == "full" ? 1.0
                                             : moba_pairs_per_sequence(m.seq_len, 1,
                                                                       m.attention.block_size,
                                                                       m.attention.top_k) /
                                                   dense_pairs_per_sequence(m.seq_len, 1);
        {
          // Every validation (eval.every apart, and at the end) forwards its windows: a
          // third of a training token's work each.
          const int64_t every = r.config.eval.every, steps = r.config.train.steps;
          const double evals = static_cast<double>(steps / every + (steps % every != 0));
          r.token_equivalents =
              tokens + evals * static_cast<double>(r.config.eval.windows * m.seq_len) / 3.0;
        }
        if (s.estimate.known()) {
          r.seconds_parts = estimate_seconds(s.estimate, r.exec_parts, r.token_equivalents);
          r.seconds = r.seconds_parts.total();
        }
        if (synthetic)
          r.data_reads = 0;
        else if (facts.train_tokens > 0)
          r.data_reads = tokens / static_cast<double>(facts.train_tokens);
        r.memory_bytes = memory_estimate(m, r.config.train.batch_size);
        r.lr_rule = lr_rule;
        r.lr_multiplier = absolute ? 0.0 : pt.lr;
        r.warmup_fraction = pt.warmup;
        r.seed = seed;
        plan.runs.push_back(std::move(r));
      }
    }
  }
  // Each run has a folder of its own: two grid values that print alike (0.1 and 0.1000001
  // under %g) would share one.
  for (size_t a = 0; a < plan.runs.size(); ++a)
    for (size_t b = 0; b < a; ++b)
      MOBA_CHECK(plan.runs[a].config.name != plan.runs[b].config.name, s.origin,
                 ": two runs are named ", plan.runs[a].config.name,
                 "; make the [search] values differ in their first six digits");
  return plan;
}

void check_data_reuse(const Plan& plan, bool force_reuse) {
  if (force_reuse) return;
  std::string over;
  for (const PlannedRun& r : plan.runs)
    if (r.data_reads > plan.sweep.max_data_reads) {
      char buf[64];
      std::snprintf(buf, sizeof buf, " %.2f", r.data_reads);
      over += "\n  " + r.config.name + ":" + buf + " times";
    }
  MOBA_CHECK(over.empty(), "the sweep would read its training data more than ",
             plan.sweep.max_data_reads, " times in these runs (", plan.data_note, "):", over,
             "\nuse more data, fewer tokens per parameter or smaller sizes, or pass --force-reuse "
             "to train on repeated data anyway");
}

void check_supported(const Plan& plan, const std::string& device) {
  std::string refused;
  for (const PlannedRun& r : plan.runs) {
    const train::Support sup = train::supports(r.config, device);
    if (!sup.ok()) refused += "\n  " + r.config.name + ": " + sup.text();
  }
  MOBA_CHECK(refused.empty(), "these runs cannot train on ", device, ":", refused,
             "\nchange the preset (or --set its keys) so that every run fits the device");
}

void plan_on_gpus(Plan& plan, int gpus) {
  MOBA_CHECK(gpus >= 1, "--gpus must be >= 1, got ", gpus);
  MOBA_CHECK(plan.gpus == 0, "internal: the plan is already on ", plan.gpus, " GPUs");
  plan.gpus = gpus;
  for (PlannedRun& r : plan.runs) {
    if (r.seconds < 0) continue;
    r.seconds /= gpus;
    for (double* part : {&r.seconds_parts.per_token, &r.seconds_parts.matmul,
                         &r.seconds_parts.full_attention, &r.seconds_parts.moba_attention})
      *part /= gpus;
  }
}

void print_plan(std::FILE* f, const Plan& p) {
  if (!f) return;
  const SweepConfig& s = p.sweep;
  const model::ModelConfig& m0 = p.runs.front().config.model;
  std::fprintf(f, "sweep %s (%s): %zu runs = %zu sizes x {", s.name.c_str(), s.origin.c_str(),
               p.runs.size(), s.ladder.layers.size());
  for (size_t i = 0; i < s.attention.size(); ++i)
    std::fprintf(f, "%s%s", i ? ", " : "", s.attention[i].c_str());
  const SearchConfig& g = s.search;
  const bool grid = g.points() > 1;
  std::fprintf(f, "}");
  if (grid) {
    const auto n = [](size_t k, const char* what) {
      k = std::max<size_t>(1, k);
      return std::to_string(k) + " " + what + (k > 1 ? "s" : "");
    };
    std::fprintf(f, " x %zu search points (%s x %s x %s)", g.points(),
                 n(g.lr.size() + g.lr_multipliers.size(), "learning rate").c_str(),
                 n(g.tied_embeddings.size(), "embedding").c_str(),
                 n(g.warmup_fractions.size(), "warm-up").c_str());
  }
  if (!g.seeds.empty()) {
    std::string list;
    for (size_t i = 0; i < g.seeds.size(); ++i)
      list += (i ? ", " : "") + std::to_string(g.seeds[i]);
    std::fprintf(f, " x %zu seed%s (%s)", g.seeds.size(), g.seeds.size() == 1 ? "" : "s",
                 list.c_str());
  }
  std::fprintf(f, "; T = %lld, MoBA S = %lld, K = %lld, vocabulary %lld, head dim %lld\n",
               static_cast<long long>(m0.seq_len), static_cast<long long>(m0.attention.block_size),
               static_cast<long long>(m0.attention.top_k), static_cast<long long>(m0.vocab_size),
               static_cast<long long>(m0.head_dim));
  if (s.ladder.tokens.empty())
    std::fprintf(f, "tokens = %g x non-embedding parameters (whole steps of %lld tokens); ",
                 s.ladder.tokens_per_param,
                 static_cast<long long>(s.base.train.tokens_per_step(m0.seq_len)));
  else
    std::fprintf(f, "tokens: the preset's ladder.tokens (whole steps of %lld tokens); ",
                 static_cast<long long>(s.base.train.tokens_per_step(m0.seq_len)));
  std::fprintf(f, "lr = min(%g, %g x (6ND)^-%g)%s\ndata: %s; %s rows\n\n", s.lr.max,
               s.lr.coefficient, s.lr.exponent,
               !grid          ? ""
               : g.lr.empty() ? ", times the search's multiplier"
                              : "; the search's learning rates replace it",
               p.data_note.c_str(), s.base.data_packing.c_str());
  // With a search, the grid's three values of each run, after its name.
  std::fprintf(f, "| # | run | L=H | C | params (non-emb / total) | tokens | steps | lr | %s"
                  "6ND FLOPs | exec FLOPs | attn density | est. time | data reads | memory |\n"
                  "|---|---|---|---|---|---|---|---|%s---|---|---|---|---|---|\n",
               grid ? "lr / rule | embeddings | warm-up | " : "", grid ? "---|---|---|" : "");
  double f6 = 0, fe = 0;
  for (size_t i = 0; i < p.runs.size(); ++i) {
    const PlannedRun& r = p.runs[i];
    const model::ModelConfig& m = r.config.model;
    char reads[32] = "n/a";
    if (r.data_reads >= 0)
      std::snprintf(reads, sizeof reads, "%.2f%s", r.data_reads,
                    r.data_reads > s.max_data_reads ? " (!)" : "");
    std::fprintf(
        f,
        "| %zu | %s | %lld | %lld | %s / %s | %s | %lld | %.2e | %s%.3e | %.3e | %.2f | "
        "%s | %s | %s |\n",
        i + 1, r.config.name.c_str(), static_cast<long long>(m.layers),
        static_cast<long long>(m.width), si(static_cast<double>(r.params.non_embedding)).c_str(),
        si(static_cast<double>(r.params.total)).c_str(), si(r.tokens).c_str(),
        static_cast<long long>(r.config.train.steps), r.config.train.lr,
        grid ? search_cells(r).c_str() : "", r.flops_6nd, r.flops_exec,
        r.attention_density, r.seconds >= 0 ? train::format_duration(r.seconds).c_str() : "-",
        reads, bytes(r.memory_bytes).c_str());
    f6 += r.flops_6nd;
    fe += r.flops_exec;
  }
  std::fprintf(f,
               "\ntotal: 6ND %.3e FLOPs (%.3g PFLOP/s-days), executed %.3e FLOPs (%.3g "
               "PFLOP/s-days)",
               f6, f6 / kPflopsDay, fe, fe / kPflopsDay);
  const double t = p.total_seconds();
  if (t >= 0) std::fprintf(f, ", estimated time %s", train::format_duration(t).c_str());
  std::fprintf(f, "\n");
  const ThroughputModel& e = s.estimate;
  if (e.known() && !e.split())
    std::fprintf(f, "estimate: %.3g us per token + executed FLOPs at %.3g FLOP/s%s%s\n",
                 e.seconds_per_token * 1e6, e.flops_per_s, e.note.empty() ? "" : "; ",
                 e.note.c_str());
  if (e.split()) {
    std::fprintf(f,
                 "estimate: %.3g us per token + matmul FLOPs at %.3g FLOP/s + full attention's "
                 "at %.3g + MoBA attention's (attended pairs, the gate's time included) at "
                 "%.3g%s%s\n",
                 e.seconds_per_token * 1e6, e.matmul_rate(), e.full_attention_rate(),
                 e.moba_attention_rate(), e.note.empty() ? "" : "; ", e.note.c_str());
  }
  if (t >= 0) {
    TimeParts sum;
    for (const PlannedRun& r : p.runs) {
      sum.per_token += r.seconds_parts.per_token;
      sum.matmul += r.seconds_parts.matmul;
      sum.full_attention += r.seconds_parts.full_attention;
      sum.moba_attention += r.seconds_parts.moba_attention;
    }
    std::fprintf(f, "estimated time by part: per token %s, matmuls %s, full attention %s, MoBA "
                    "attention %s\n",
                 train::format_duration(sum.per_token).c_str(),
                 train::format_duration(sum.matmul).c_str(),
                 train::format_duration(sum.full_attention).c_str(),
                 train::format_duration(sum.moba_attention).c_str());
  }
  if (e.known() && p.gpus > 0)
    std::fprintf(f,
                 "on %d GPUs: each run's time is that estimate / %d, assuming linear scaling "
                 "(data parallel's aim; not measured yet, docs/distributed.md)\n",
                 p.gpus, p.gpus);
  if (p.gpus > 0)
    std::fprintf(f,
                 "data parallel over %d GPUs per run: tokens, steps and data reads as on one "
                 "(the global batch of B = %lld rows is split, %lld per GPU; the memory column, for "
                 "all B rows, bounds a GPU's)\n",
                 p.gpus, static_cast<long long>(s.base.train.batch_size),
                 static_cast<long long>(s.base.train.batch_size / p.gpus));
  std::fprintf(f,
               "memory: estimated for GPU bf16 training of one micro-batch of B = %lld (18 bytes "
               "per parameter + activations; train/memory.h)\n",
               static_cast<long long>(s.base.train.batch_size));
  std::fflush(f);
}

nlohmann::json plan_json(const Plan& p) {
  nlohmann::json runs = nlohmann::json::array();
  for (const PlannedRun& r : p.runs) {
    const model::ModelConfig& m = r.config.model;
    runs.push_back({{"name", r.config.name},
                    {"attention", r.attention},
                    {"layers", m.layers},
                    {"heads", m.heads},
                    {"width", m.width},
                    {"head_dim", m.head_dim},
                    {"seq_len", m.seq_len},
                    {"params_non_embedding", r.params.non_embedding},
                    {"params_total", r.params.total},
                    {"tokens", r.tokens},
                    {"steps", r.config.train.steps},
                    {"lr", r.config.train.lr},
                    {"lr_rule", r.lr_rule},
                    {"lr_multiplier", r.lr_multiplier},
                    {"tied_embeddings", m.tied_embeddings},
                    {"warmup_fraction", r.warmup_fraction},
                    {"warmup_steps", r.config.train.warmup_steps},
                    {"seed", r.seed},
                    {"flops_6nd", r.flops_6nd},
                    {"flops_exec", r.flops_exec},
                    {"attention_density", r.attention_density},
                    {"exec_per_token",
                     {{"matmul", r.exec_parts.matmul},
                      {"full_attention", r.exec_parts.full_attention},
                      {"moba_attention", r.exec_parts.moba_attention}}},
                    {"token_equivalents", r.token_equivalents},
                    {"seconds_estimated", r.seconds >= 0 ? nlohmann::json(r.seconds) : nullptr},
                    {"seconds_estimated_parts",
                     r.seconds >= 0 ? nlohmann::json{{"per_token", r.seconds_parts.per_token},
                                                     {"matmul", r.seconds_parts.matmul},
                                                     {"full_attention", r.seconds_parts.full_attention},
                                                     {"moba_attention", r.seconds_parts.moba_attention}}
                                    : nlohmann::json(nullptr)},
                    {"data_reads", r.data_reads >= 0 ? nlohmann::json(r.data_reads) : nullptr},
                    {"memory_bytes", r.memory_bytes}});
  }
  return {{"sweep", p.sweep.name},
          {"gpus", p.gpus},
          {"preset", p.sweep.origin},
          {"data", p.sweep.base.data},
          {"data_packing", p.sweep.base.data_packing},
          {"data_train_tokens", p.data_train_tokens},
          {"tokens_per_param", p.sweep.ladder.tokens_per_param},
          {"lr_rule",
           {{"coefficient", p.sweep.lr.coefficient},
            {"exponent", p.sweep.lr.exponent},
            {"max", p.sweep.lr.max}}},
          {"estimate",
           {{"seconds_per_token", p.sweep.estimate.seconds_per_token},
            {"flops_per_s", p.sweep.estimate.flops_per_s},
            {"matmul_flops_per_s", p.sweep.estimate.matmul_rate()},
            {"attention_flops_per_s",
             {{"full", p.sweep.estimate.full_attention_rate()},
              {"moba", p.sweep.estimate.moba_attention_rate()}}},
            {"note", p.sweep.estimate.note}}},
          {"search",
           {{"lr_multipliers", p.sweep.search.lr_multipliers},
            {"lr", p.sweep.search.lr},
            {"tied_embeddings", p.sweep.search.tied_embeddings},
            {"warmup_fractions", p.sweep.search.warmup_fractions},
            {"seeds", p.sweep.search.seeds},
            {"points", p.sweep.search.points()}}},
          {"runs", runs}};
}

}  // namespace moba::scaling
