#include "train/memory.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <sstream>

#include "core/build_info.h"
#include "core/error.h"

namespace moba::train {

MemoryEstimate estimate_memory(const model::ModelConfig& cfg0, int64_t batch_size,
                               const std::string& device) {
  const model::ModelConfig c = cfg0.resolved();
  const double C = static_cast<double>(c.width), L = static_cast<double>(c.layers),
               V = static_cast<double>(c.vocab_size), T = static_cast<double>(c.seq_len),
               F = static_cast<double>(c.mlp_hidden),
               D = static_cast<double>(c.head_dim),
               kv = static_cast<double>(c.kv_heads) * D, q = static_cast<double>(c.heads) * D;
  // param_counts in double: the int64 one would overflow on absurd sizes.
  const double per_layer = C * q + 2 * C * kv + q * C + 3 * C * F + 2 * C;
  const double params = L * per_layer + C + V * C * (c.tied_embeddings ? 1 : 2);
  const bool gpu = device == "cuda";
  const double tokens = static_cast<double>(batch_size) * T;
  MemoryEstimate m;
  m.weights = params * (gpu ? 6.0 : 4.0);  // fp32 master (+ bf16 copy on the GPU)
  m.gradients = params * 4.0;
  m.optimizer = params * 8.0;
  // GPU, bf16 with flash attention: 34 x C bytes per token and layer (Korthikanti et al.
  // 2022). CPU, fp32: the layer inputs, norms, q/k/v/o and the MLP's three F-wide
  // products kept for backward. Both: fp32 logits and their gradient.
  const double per_token_layer = gpu ? 34.0 * C : 4.0 * (4.0 * C + q + 2 * kv + 3.0 * F);
  m.activations = tokens * (L * per_token_layer + 8.0 * V);
  return m;
}

double machine_memory(const std::string& device) {
  if (device == "cuda") {
    size_t free_bytes = 0, total_bytes = 0;
    return cuda_memory_info(&free_bytes, &total_bytes) ? static_cast<double>(total_bytes) : 0.0;
  }
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? static_cast<double>(pages) * static_cast<double>(page) : 0.0;
}

std::string format_bytes(double b) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB", "PB", "EB"};
  int u = 0;
  while (b >= 1000.0 && u < 6) b /= 1000.0, ++u;
  char s[64];
  if (u == 6 && b >= 1000.0)
    std::snprintf(s, sizeof s, "%.1e EB", b);
  else
    std::snprintf(s, sizeof s, u == 0 ? "%.0f %s" : "%.1f %s", b, units[u]);
  return s;
}

std::string memory_problem(const model::ModelConfig& cfg, int64_t batch_size, int64_t grad_accum,
                           const std::string& device) {
  // Token counts are int64 in the trainer (tokens per step, cumulative tokens): keep the
  // products well inside 64 bits.
  const double step_tokens = static_cast<double>(batch_size) * static_cast<double>(grad_accum) *
                             static_cast<double>(cfg.seq_len);
  std::ostringstream os;
  if (step_tokens >= 0x1p53) {
    os << "train.batch_size x train.grad_accum x model.seq_len = " << batch_size << " x "
       << grad_accum << " x " << cfg.seq_len << " tokens per step is too large to count";
    return os.str();
  }
  const MemoryEstimate m = estimate_memory(cfg, batch_size, device);
  const double have = machine_memory(device);
  if (have <= 0 || m.total() <= have) return "";  // unknown: let the allocation decide
  os << "the configuration needs at least " << format_bytes(m.total()) << " to train on "
     << (device == "cuda" ? "the GPU" : "this machine") << " (weights " << format_bytes(m.weights)
     << ", gradients " << format_bytes(m.gradients) << ", AdamW moments "
     << format_bytes(m.optimizer) << ", activations of a micro-batch of " << batch_size << " x "
     << cfg.seq_len << " tokens " << format_bytes(m.activations) << "), and it has "
     << format_bytes(have)
     << " in all: reduce model.layers, model.width, model.seq_len or train.batch_size";
  return os.str();
}

void check_memory(const model::ModelConfig& cfg, int64_t batch_size, int64_t grad_accum,
                  const std::string& device) {
  const std::string why = memory_problem(cfg, batch_size, grad_accum, device);
  MOBA_CHECK(why.empty(), why);
}

}  // namespace moba::train
