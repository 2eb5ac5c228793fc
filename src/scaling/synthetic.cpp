#include "scaling/synthetic.h"

#include <cmath>
#include <fstream>
#include <random>

#include "core/error.h"
#include "scaling/curves.h"
#include "scaling/runs.h"

namespace moba::scaling {

PowerLaw synthetic_frontier(const ChinchillaLaw& l) {
  const double alpha = l.a * l.b / (l.a + l.b);
  // L* - E = (1 + a/b) A (aA/(bB))^(-a/(a+b)) (C/6)^(-alpha), C in FLOPs.
  const double g_flops = (1 + l.a / l.b) * l.A * std::pow(l.a * l.A / (l.b * l.B), -l.a / (l.a + l.b)) *
                         std::pow(6.0, alpha);
  // C_flops = C_pfdays * kFlopsPerPflopsDay.
  return {g_flops * std::pow(kFlopsPerPflopsDay, -alpha), alpha, l.E};
}

int64_t synthetic_params(const SyntheticSpec& spec, size_t i) {
  if (!spec.params.empty()) return spec.params.at(i);
  const int64_t heads = spec.heads.at(i);
  const int64_t width = static_cast<int64_t>(spec.head_dim) * heads;
  return 12 * static_cast<int64_t>(heads) * width * width;
}

std::vector<double> synthetic_bucket_factors(const SyntheticSpec& spec) {
  const int nb = spec.seq_len / spec.bucket_size;
  std::vector<double> f(static_cast<size_t>(nb));
  double mean = 0;
  for (int i = 0; i < nb; ++i) mean += (f[static_cast<size_t>(i)] = 1.0 / (i + 1)) / nb;
  for (double& x : f) x = 1 + spec.bucket_spread * (x - mean);
  return f;
}

void write_synthetic_runs(const std::filesystem::path& dir, const SyntheticSpec& spec) {
  MOBA_CHECK(spec.evals >= 2, "synthetic runs need >= 2 evaluations, got ", spec.evals);
  MOBA_CHECK(spec.params.empty() || spec.params.size() == spec.heads.size(),
             "synthetic spec: ", spec.params.size(), " parameter counts for ", spec.heads.size(),
             " sizes");
  MOBA_CHECK(spec.bucket_size > 0 && spec.seq_len % spec.bucket_size == 0,
             "seq_len must be a multiple of bucket_size");
  std::mt19937_64 gen(spec.seed);
  std::normal_distribution<double> noise(0.0, spec.noise);
  const std::vector<double> factors = synthetic_bucket_factors(spec);
  const int n_runs = static_cast<int>(spec.heads.size() * spec.attentions.size());
  int run_no = 0;
  for (size_t size = 0; size < spec.heads.size(); ++size)
    for (const std::string& attention : spec.attentions) {
      const int h = spec.heads[size];
      ++run_no;
      const bool moba = attention == "moba";
      const ChinchillaLaw& law = moba ? spec.moba : spec.full;
      RunInfo info;
      info.name = "synthetic-" + attention + "-" + std::to_string(size) + "-h" + std::to_string(h);
      info.attention = attention;
      info.block_size = spec.block_size;
      info.top_k = spec.top_k;
      info.layers = info.heads = info.kv_heads = h;
      info.head_dim = spec.head_dim;
      info.width = static_cast<int64_t>(spec.head_dim) * h;
      info.seq_len = spec.seq_len;
      info.vocab_size = 256;
      info.params_non_embedding = synthetic_params(spec, size);
      info.params_total = info.params_non_embedding + 2 * 256 * info.width;
      info.tokens_planned = spec.tokens_per_param * static_cast<double>(info.params_non_embedding);
      const bool running = run_no > n_runs - spec.running_runs;
      info.status = running ? "running" : "finished";
      info.bytes_per_token = 1.0;
      const std::filesystem::path run_dir = dir / info.name;
      write_run_json(run_dir, info);

      // Executed FLOPs per token: 6N plus attention, 3.5 x 4 x pairs x D per head and layer
      // (docs/moba.md), with T/2 keys per query for full attention and about K*S - S/2 for
      // MoBA (the current block half full on average).
      const double N = static_cast<double>(info.params_non_embedding);
      const double keys = moba ? std::min(spec.seq_len / 2.0, spec.top_k * spec.block_size - spec.block_size / 2.0)
                               : spec.seq_len / 2.0;
      const double attn_per_token = 3.5 * 4.0 * keys * static_cast<double>(info.width) * h;
      std::ofstream f(run_dir / "metrics.jsonl");
      const int evals = running ? spec.evals * 2 / 3 : spec.evals;
      for (int e = 0; e < evals; ++e) {
        const double frac = spec.first_eval_fraction *
                            std::pow(1.0 / spec.first_eval_fraction, e / (spec.evals - 1.0));
        ValPoint p;
        p.tokens = std::round(frac * info.tokens_planned);
        p.step = static_cast<int64_t>(std::llround(p.tokens / spec.seq_len));
        p.flops_6nd = 6.0 * N * p.tokens;
        p.flops_exec = p.flops_6nd + attn_per_token * p.tokens;
        const double lm = law(N, p.tokens) * std::exp(noise(gen));
        p.loss = lm;
        p.bucket_size = spec.bucket_size;
        for (double s : factors) p.bucket_losses.push_back(s * lm * std::exp(noise(gen)));
        p.trailing_loss = p.bucket_losses.back() *
                          (moba ? spec.trailing_factor_moba : spec.trailing_factor_full);
        p.windows = 64;
        TrainPoint t{p.step, p.tokens, lm * 1.01, p.flops_6nd, p.flops_exec, 0.0};
        f << train_line(t) << "\n" << val_line(p) << "\n";
      }
    }
}

}  // namespace moba::scaling
