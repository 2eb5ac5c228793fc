#include "model/config.h"

#include <cmath>

#include "core/error.h"

namespace moba::model {

int64_t ModelConfig::ffn() const {
  if (mlp_hidden) return mlp_hidden;
  const int64_t m = mlp_multiple_of > 0 ? mlp_multiple_of : 1;
  const int64_t f = (8 * width) / 3;
  return (f + m - 1) / m * m;
}

ModelConfig ModelConfig::resolved() const {
  ModelConfig c = *this;
  if (c.heads >= 1 && c.width >= 1) {
    c.kv_heads = kv();
    c.head_dim = hd();
    c.mlp_hidden = ffn();
  }
  return c;
}

void ModelConfig::validate() const {
  MOBA_CHECK(vocab_size >= 2, "model.vocab_size must be >= 2, got ", vocab_size);
  MOBA_CHECK(width >= 1, "model.width must be >= 1, got ", width);
  MOBA_CHECK(layers >= 1, "model.layers must be >= 1, got ", layers);
  MOBA_CHECK(heads >= 1, "model.heads must be >= 1, got ", heads);
  MOBA_CHECK(kv_heads >= 0, "model.kv_heads must be >= 1 (or 0 for heads), got ", kv_heads);
  MOBA_CHECK(heads % kv() == 0, "model.heads (", heads, ") must be a multiple of model.kv_heads (",
             kv(), ")");
  MOBA_CHECK(head_dim >= 0, "model.head_dim must be >= 2 (or 0 for width / heads), got ", head_dim);
  MOBA_CHECK(head_dim != 0 || width % heads == 0, "model.width (", width,
             ") is not a multiple of model.heads (", heads, "); set model.head_dim");
  MOBA_CHECK(hd() >= 2 && hd() % 2 == 0,
             "model.head_dim must be even and >= 2 (RoPE rotates pairs), got ",
             hd());
  MOBA_CHECK(mlp_hidden >= 0, "model.mlp_hidden must be >= 1 (or 0 for automatic), got ",
             mlp_hidden);
  MOBA_CHECK(mlp_multiple_of >= 1, "model.mlp_multiple_of must be >= 1, got ", mlp_multiple_of);
  MOBA_CHECK(seq_len >= 1, "model.seq_len must be >= 1, got ", seq_len);
  MOBA_CHECK(std::isfinite(rope_theta) && rope_theta > 1.0, "model.rope_theta must be > 1, got ",
             rope_theta);
  MOBA_CHECK(std::isfinite(norm_eps) && norm_eps > 0.0 && norm_eps < 1.0,
             "model.norm_eps must be in (0, 1), got ", norm_eps);
  MOBA_CHECK(std::isfinite(init_std) && init_std > 0.0 && init_std < 10.0,
             "model.init_std must be in (0, 10), got ", init_std);
  const AttentionConfig& a = attention;
  MOBA_CHECK(a.block_size >= 1, "attention.block_size must be >= 1, got ", a.block_size);
  MOBA_CHECK(a.top_k >= 1, "attention.top_k must be >= 1 (the current block counts), got ",
             a.top_k);
  MOBA_CHECK(a.full_attention_last_layers >= 0 && a.full_attention_last_layers <= layers,
             "attention.full_attention_last_layers must be in [0, model.layers = ", layers,
             "], got ", a.full_attention_last_layers);
  MOBA_CHECK(
      std::isfinite(a.moba_to_full_at) && a.moba_to_full_at >= 0.0 && a.moba_to_full_at <= 1.0,
      "attention.moba_to_full_at must be in [0, 1], got ", a.moba_to_full_at);
}

bool layer_uses_moba(const ModelConfig& cfg, int64_t layer, bool moba_phase) {
  const AttentionConfig& a = cfg.attention;
  return a.kind == AttentionKind::moba && moba_phase &&
         layer < cfg.layers - a.full_attention_last_layers;
}

std::string attention_label(const ModelConfig& cfg) {
  const AttentionConfig& a = cfg.attention;
  if (a.kind == AttentionKind::full) return "full";
  if (a.full_attention_last_layers > 0 || a.moba_to_full_at < 1.0) return "hybrid";
  return "moba";
}

ParamCounts param_counts(const ModelConfig& cfg0) {
  const ModelConfig c = cfg0.resolved();
  const int64_t C = c.width, V = c.vocab_size, D = c.head_dim, F = c.mlp_hidden;
  const int64_t attn = C * (c.heads * D) + 2 * C * (c.kv_heads * D) + (c.heads * D) * C;
  const int64_t mlp = 3 * C * F;
  const int64_t norms = 2 * C;
  ParamCounts p;
  p.non_embedding = c.layers * (attn + mlp + norms) + C;  // + final norm
  p.total = p.non_embedding + V * C + (c.tied_embeddings ? 0 : V * C);
  p.matmul = c.layers * (attn + mlp) + V * C;
  return p;
}

double matmul_flops_per_token(const ModelConfig& cfg) {
  return 6.0 * static_cast<double>(param_counts(cfg).matmul);
}

}  // namespace moba::model
