// The sweep's preset and its plan: what `moba sweep` reads (sweeps/NAME.toml, every key in
// docs/sweep.md) and what its planner prints before anything trains.
//
// A preset is `[base]`, a run configuration in exactly `moba train`'s format (train/config.h:
// [base.model], [base.attention], [base.train], ...), plus the ladder that sets, per run,
// what varies: name, model.layers = model.heads = L, model.width = ladder.head_dim x L,
// model.head_dim, model.kv_heads, attention.kind, train.steps, train.lr,
// train.warmup_steps, eval.every, checkpoint.every (and log.every unless [base] sets it).
// [base] must not set those keys. Every key is declared once (sweep_schema()).
//
// A preset is a ladder of model sizes in the MoBA paper's pattern (layers = heads = L,
// width = head_dim x L), each trained once per attention type. Per size:
//   tokens = r x non-embedding parameters (r = ladder.tokens_per_param, Chinchilla's 20),
//            or the ladder's explicit `tokens` list (the paper's Table 1), rounded up to
//            whole optimizer steps by the trainer;
//   lr     = lr.coefficient x C^-lr.exponent, C = 6ND in FLOPs, capped at lr.max
//            (DeepSeek LLM's fitted rule, eta_opt = 0.3118 C^-0.125; with tokens = rN it
//            is lr proportional to N^-0.25).
// A `[search]` table turns each (size, attention) into a grid of runs around the ladder's
// (docs/sweep.md, "Learning-rate search"): learning rates (multiples of the rule's, or
// absolute values) x tied or untied embeddings x warm-up fractions, every combination; its
// `seeds` list trains each of those once per training seed (docs/sweep.md, "Seeds").
// The plan gives every run's parameters, tokens, FLOPs in both conventions (6ND, and
// executed: matmuls plus attention over dense causal pairs or MoBA's selected pairs,
// counted as the trainer counts them), an estimated time, a memory estimate and how many
// times the run reads its training data.
#pragma once

#include <cstdint>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/schema.h"
#include "model/config.h"
#include "train/config.h"

namespace moba::scaling {

struct LadderConfig {
  std::vector<int64_t> layers;     // one size per entry: layers = heads = L
  int64_t head_dim = 64;           // D; width = D x L
  int64_t kv_heads = 0;            // 0: = heads (no grouping)
  double tokens_per_param = 20.0;  // r
  std::vector<double> tokens;      // explicit budgets per size (same length as layers), or empty
  double warmup_fraction = 0.05;   // warm-up steps = round(fraction x steps)
  int64_t eval_points = 8;         // validations per run, evenly spaced (and at the end)
};

// The learning-rate rule: lr = coefficient x C^-exponent (C = 6ND FLOPs), at most `max`.
struct LrRule {
  double coefficient = 0.3118;
  double exponent = 0.125;
  double max = 0.05;
};

// How long a run takes: seconds = token equivalents x (seconds_per_token + matmul FLOPs per
// token / matmul rate + full attention's FLOPs per token / its rate + MoBA attention's
// attended FLOPs per token / its rate), token equivalents = training tokens + validation
// window tokens / 3 (a forward without backward). Each of the three rates falls back to
// flops_per_s when not given (0), so the two-figure form (seconds_per_token, flops_per_s)
// is one rate for every FLOP. Full attention's rate covers every dense layer (a MoBA
// run's full_attention_last_layers too); MoBA's covers its layers' attended pairs, the
// gate's time included (the FLOPs do not count the gate: docs/sweep.md, "What the planner
// prints").
// Everything 0: no estimate.
struct ThroughputModel {
  double flops_per_s = 0.0;        // executed FLOP/s of the FLOPs without a rate of their own
  double seconds_per_token = 0.0;  // per-token time beside the FLOPs (norms, embeddings, launches)
  double matmul_flops_per_s = 0.0;           // 0: flops_per_s
  double full_attention_flops_per_s = 0.0;   // attention_flops_per_s.full; 0: flops_per_s
  double moba_attention_flops_per_s = 0.0;   // attention_flops_per_s.moba; 0: flops_per_s
  std::string note;                // where the figures come from (printed with the plan)
  bool known() const {
    return flops_per_s > 0.0 || seconds_per_token > 0.0 || split();
  }
  // Any of the three rates given (the split form).
  bool split() const {
    return matmul_flops_per_s > 0.0 || full_attention_flops_per_s > 0.0 ||
           moba_attention_flops_per_s > 0.0;
  }
  // The rate each part runs at: its own, else flops_per_s (0: the part takes no time).
  double matmul_rate() const { return matmul_flops_per_s > 0 ? matmul_flops_per_s : flops_per_s; }
  double full_attention_rate() const {
    return full_attention_flops_per_s > 0 ? full_attention_flops_per_s : flops_per_s;
  }
  double moba_attention_rate() const {
    return moba_attention_flops_per_s > 0 ? moba_attention_flops_per_s : flops_per_s;
  }
};

// The learning-rate search's grid; an empty list leaves that key at the ladder's value.
// With more than one point, run names get "-lr<m>x" (or "-lr<value>"), "-tied" or
// "-untied" and "-wu<fraction>", every part always, so that a run keeps its name when
// another list grows (a second sweep with --set adds runs beside the first's).
struct SearchConfig {
  std::vector<double> lr_multipliers;    // x the rule's lr (after its cap)
  std::vector<double> lr;                // absolute learning rates (instead of multipliers)
  std::vector<bool> tied_embeddings;     // empty: base.model.tied_embeddings
  std::vector<double> warmup_fractions;  // empty: ladder.warmup_fraction
  // Training seeds (train.seed: initialisation and batch order; seeds.h): each grid point
  // trains once per seed, named "-s<seed>" after the grid's part; empty: base.train.seed,
  // no suffix. Not part of points(): seeds replicate runs, the grid varies them.
  std::vector<int64_t> seeds;
  bool given = false;  // the preset sets a key of the learning-rate grid (not only seeds)
  // Grid points per (size, attention): 1 without [search].
  size_t points() const;
  // Runs per grid point: the number of seeds, at least 1.
  size_t replicas() const { return seeds.empty() ? 1 : seeds.size(); }
};

struct SweepConfig {
  std::string name = "sweep";
  std::string origin;  // the file it was read from (messages)
  // Training tokens of the data when its folder is absent (planning on another machine);
  // 0: unknown. The folder's manifest, when present, wins.
  int64_t data_train_tokens = 0;
  std::string runs_dir;  // where the run folders go ("": runs/NAME)
  std::vector<std::string> attention = {"full", "moba"};
  // Every run's configuration before the ladder's overrides. base.data: a folder of token
  // shards (`moba prepare`, relative to the current directory) or "synthetic:assoc_recall".
  train::RunConfig base;
  bool base_sets_log_every = false;  // else log.every gives about 10 lines per run
  LadderConfig ladder;
  LrRule lr;
  SearchConfig search;
  ThroughputModel estimate;
  double max_data_reads = 4.0;  // a run reading its data more often is refused
};

// Every key of a preset: its own, and [base]'s (the run schema under "base.").
const schema::Schema<SweepConfig>& sweep_schema();
// The Markdown table of the preset's own keys (docs/sweep.md holds it; tests compare).
std::string sweep_markdown();

// Reads and validates a preset, then applies `sets` ("ladder.layers=[2, 3]",
// "base.model.seq_len=256": `moba sweep --set`); errors name the file (or --set) and the
// key. Unknown keys are errors; a preset in the form before [base] gets one explaining the
// new form.
SweepConfig load_sweep_config(const std::string& path, const std::vector<std::string>& sets = {});
SweepConfig parse_sweep_config(const std::string& toml_text, const std::string& origin,
                               const std::vector<std::string>& sets = {});

// Executed training FLOPs per token (forward + backward) by the rate they run at: the
// matmuls (model::matmul_flops_per_token), full attention (dense causal pairs: every layer
// of a full run, a MoBA run's full_attention_last_layers) and MoBA attention (the attended
// pairs of its MoBA layers).
struct ExecFlops {
  double matmul = 0, full_attention = 0, moba_attention = 0;
  double total() const { return matmul + full_attention + moba_attention; }
};

// A run's estimated seconds by part of the time model.
struct TimeParts {
  double per_token = 0, matmul = 0, full_attention = 0, moba_attention = 0;
  double total() const { return per_token + matmul + full_attention + moba_attention; }
};

// The time model applied to `token_equivalents` tokens of `per_token` FLOPs.
TimeParts estimate_seconds(const ThroughputModel& m, const ExecFlops& per_token,
                           double token_equivalents);

// One planned run.
struct PlannedRun {
  train::RunConfig config;  // resolved: what the trainer gets
  std::string attention;    // "full" or "moba"
  int64_t size = 0;         // index in the ladder
  model::ParamCounts params;
  double tokens = 0;      // planned (whole steps)
  double flops_6nd = 0;   // 6 x non-embedding params x tokens
  double flops_exec = 0;  // executed, forward + backward (docs/run_format.md)
  double exec_per_token = 0;
  ExecFlops exec_parts;            // exec_per_token by part (their sum, up to rounding)
  double attention_density = 1;    // attended pairs / dense causal pairs
  double token_equivalents = 0;    // tokens + validation window tokens / 3
  double seconds = -1;             // estimated; < 0 when the preset gives no throughput
  TimeParts seconds_parts;         // seconds by part (all 0 without an estimate)
  double data_reads = -1;        // tokens / training tokens; < 0 when unknown (synthetic: 0)
  double memory_bytes = 0;       // estimate for one micro-batch, see memory_estimate()
  // Its point of the [search] grid: the rule's lr for its size, what multiplied it (0 when
  // the grid gives absolute values), and the warm-up fraction its warm-up steps come from.
  double lr_rule = 0;
  double lr_multiplier = 1;
  double warmup_fraction = 0;
  int64_t seed = 0;  // train.seed (search.seeds' value, else base.train.seed)
};

struct Plan {
  SweepConfig sweep;
  std::string data_note;          // where the data figures come from
  int64_t data_train_tokens = 0;  // 0: unknown or synthetic
  // By size, then seed (as listed), then attention in the preset's order, then the
  // [search] grid: tied before untied, warm-up fractions and learning rates as listed. Both
  // attention types of a seed are adjacent, so a sweep stopped early leaves whole pairs.
  std::vector<PlannedRun> runs;
  // Data parallel over this many GPUs per run (`moba sweep --gpus N`, plan_on_gpus); 0: one
  // device per run.
  int gpus = 0;
  double max_data_reads() const;
  double total_seconds() const;  // < 0 when unknown
};

// (query, key) pairs one sequence of T tokens attends to, summed over `heads` query heads,
// as attn::dense_pairs / attn::moba_pairs count them (MoBA: the first K blocks are dense;
// later queries see K - 1 whole past blocks and their own block up to themselves).
double dense_pairs_per_sequence(int64_t T, int64_t heads);
double moba_pairs_per_sequence(int64_t T, int64_t heads, int64_t S, int64_t K);

// Executed training FLOPs per token of a model (forward + backward): matmuls as the
// trainer counts them plus attention, for the phase where MoBA layers use MoBA.
double exec_flops_per_token(const model::ModelConfig& cfg);
// The same by part (ExecFlops); total() equals exec_flops_per_token up to rounding.
ExecFlops exec_flops_parts(const model::ModelConfig& cfg);

// Learning rate of a run of `params` non-embedding parameters trained on `tokens`.
double planned_lr(const LrRule& rule, double params, double tokens);

// The part of a run's name that its [search] point adds: "" for a grid of one point, else
// "-lr0.5x-untied-wu0.1" (multipliers) or "-lr0.003-tied-wu0.02" (absolute values).
std::string search_suffix(const SearchConfig& search, double lr_value, bool tied,
                          double warmup_fraction);

// The part of a run's name that its seed adds: "" without search.seeds, else "-s<seed>".
std::string seed_suffix(const SearchConfig& search, int64_t seed);

// Memory of training one micro-batch on a GPU in bf16: train::estimate_memory (the
// trainer's own planner, which refuses a run that cannot fit), total.
double memory_estimate(const model::ModelConfig& cfg, int64_t batch_size);

// Builds the plan: the run configurations, counts, estimates. `data_override` replaces the
// preset's data when not empty. Reads the data's manifest when the folder exists (for its
// training tokens and vocabulary) but no shard.
// eval_data: every run validates on this prepared folder's val split (eval.data).
Plan make_plan(const SweepConfig& sweep, const std::string& data_override = "",
               const std::string& eval_data = "");

// Every run data parallel over `gpus` GPUs (gpus >= 1): its estimated time becomes the
// one-GPU estimate / gpus, which assumes linear scaling (the aim of overlapping the
// gradients' all-reduce with the backward; not measured yet, docs/distributed.md). Tokens,
// steps and data reads do not change: the global batch is the same.
void plan_on_gpus(Plan& plan, int gpus);

// Throws moba::Error listing the runs that would read their data more than
// sweep.max_data_reads times, unless force_reuse.
void check_data_reuse(const Plan& plan, bool force_reuse);

// Throws moba::Error listing every run `device` cannot train and why (train::supports: the
// GPU kernels' limits, memory), before any run starts.
void check_supported(const Plan& plan, const std::string& device);

// The table people read, and the plan as JSON (written to RUNS_DIR/plan.json).
void print_plan(std::FILE* f, const Plan& plan);
nlohmann::json plan_json(const Plan& plan);

}  // namespace moba::scaling
