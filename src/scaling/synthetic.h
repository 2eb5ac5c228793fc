// Synthetic run folders that follow known scaling laws: for tests, demos and the docs'
// example figure. Never mistaken for measurements: every run's name starts "synthetic-".
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "scaling/fit.h"

namespace moba::scaling {

// Chinchilla's form L(N, D) = E + A N^-a + B D^-b (N non-embedding parameters, D tokens).
// Its compute-optimal frontier under C = 6ND is exactly E + G C^-alpha with
// alpha = ab/(a+b): see synthetic_frontier.
struct ChinchillaLaw {
  double E = 0.0, A = 87.0, a = 0.30, B = 215.0, b = 0.30;
  double operator()(double N, double D) const {
    return E + A * std::pow(N, -a) + B * std::pow(D, -b);
  }
};

// The exact frontier of `law` with C in PFLOP/s-days (6ND convention): minimising over N
// at fixed C = 6ND gives N* = (aA/(bB))^(1/(a+b)) (C/6)^(b/(a+b)) and
// L* = E + (1 + a/b) A N*^-a.
PowerLaw synthetic_frontier(const ChinchillaLaw& law);

struct SyntheticSpec {
  // The paper's ladder pattern scaled down: layers = heads, width = head_dim * heads.
  std::vector<int> heads = {4, 5, 6, 7, 8};
  // Non-embedding parameters per size instead of 12 L C^2 (same length as heads), for a
  // ladder evener than whole head counts give; empty: 12 L C^2.
  std::vector<int64_t> params;
  int head_dim = 64;
  int seq_len = 8192, bucket_size = 2048, block_size = 512, top_k = 3;
  double tokens_per_param = 20;  // token budget D = r N
  int evals = 24;                // validation points per run, log-spaced in tokens
  double first_eval_fraction = 0.02;  // of the budget
  double noise = 0.003;          // multiplicative log-normal noise per point (sigma of log)
  uint64_t seed = 1;
  ChinchillaLaw full, moba;      // LM loss laws per attention type
  // Bucket i's loss is s_i x (LM loss) with s_i decreasing over position and mean 1 (later
  // positions see more context); the trailing loss is the last bucket's times this factor.
  double bucket_spread = 0.25;
  double trailing_factor_full = 1.00, trailing_factor_moba = 1.03;
  std::vector<std::string> attentions = {"full", "moba"};
  int running_runs = 0;  // the last this many runs (largest full/moba) are left "running"
                         // with their last third of points missing
};

// Non-embedding parameters of the ladder's size i: spec.params[i], or 12 L C^2.
int64_t synthetic_params(const SyntheticSpec& spec, size_t i);
// Bucket factor s_i of the spec (mean over buckets 1).
std::vector<double> synthetic_bucket_factors(const SyntheticSpec& spec);

// Writes one folder per (size, attention) under `dir`, named
// synthetic-<attention>-<size index>-h<heads>: run.json and metrics.jsonl as `moba train` would.
void write_synthetic_runs(const std::filesystem::path& dir, const SyntheticSpec& spec);

}  // namespace moba::scaling
