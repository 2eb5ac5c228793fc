#include "model/config.h"

#include <cmath>

#include "core/error.h"
#include "core/schema.h"

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

const char* attention_kind_name(AttentionKind kind) {
  for (const auto& [k, name] : kAttentionKinds)
    if (k == kind) return name;
  return "?";
}

AttentionKind parse_attention_kind(const std::string& name, const std::string& what) {
  for (const auto& [k, n] : kAttentionKinds)
    if (name == n) return k;
  MOBA_CHECK(false, what, " must be \"full\" or \"moba\", got \"", name, "\"");
}

const std::vector<schema::Field<ModelConfig>>& model_fields() {
  using namespace schema;
  using M = ModelConfig;
  static const std::vector<Field<M>> fields = {
      MOBA_FIELD(M, "model.vocab_size", vocab_size, at_least(2), "V, the vocabulary"),
      MOBA_FIELD(M, "model.width", width, at_least(1), "C, the residual stream's width"),
      MOBA_FIELD(M, "model.layers", layers, at_least(1), "L, decoder blocks"),
      MOBA_FIELD(M, "model.heads", heads, at_least(1), "Hq, query heads"),
      MOBA_FIELD(M, "model.kv_heads", kv_heads, or_auto(at_least(1)),
                 "Hkv, key/value heads (divides heads); 0 = heads"),
      MOBA_FIELD(M, "model.head_dim", head_dim, or_auto(at_least(2)),
                 "D (even: RoPE rotates pairs); 0 = width / heads"),
      MOBA_FIELD(M, "model.mlp_hidden", mlp_hidden, or_auto(at_least(1)),
                 "F, SwiGLU's hidden width; 0 = 8C/3 rounded up to mlp_multiple_of"),
      MOBA_FIELD(M, "model.mlp_multiple_of", mlp_multiple_of, at_least(1),
                 "rounding of the automatic mlp_hidden"),
      MOBA_FIELD(M, "model.seq_len", seq_len, at_least(1), "T, the training context"),
      MOBA_FIELD(M, "model.tied_embeddings", tied_embeddings, any(),
                 "the LM head is the token embedding"),
      MOBA_FIELD(M, "model.rope_theta", rope_theta, above(1), "RoPE's base"),
      MOBA_FIELD(M, "model.norm_eps", norm_eps, within(0, 1, "()"), "RMSNorm's epsilon"),
      MOBA_FIELD(M, "model.init_std", init_std, within(0, 10, "()"),
                 "N(0, init_std^2) weights; output projections / sqrt(2L)"),
      enum_field<M>("attention.kind", [](auto& c) -> auto& { return c.attention.kind; },
                    kAttentionKinds, "full attention or MoBA in every layer"),
      MOBA_FIELD(M, "attention.block_size", attention.block_size, at_least(1),
                 "S, MoBA's block size"),
      MOBA_FIELD(M, "attention.top_k", attention.top_k, at_least(1),
                 "K, blocks each query attends to, its own included"),
      MOBA_FIELD(M, "attention.full_attention_last_layers", attention.full_attention_last_layers,
                 at_least(0), "layer-wise hybrid: the last N layers use full attention"),
      MOBA_FIELD(M, "attention.moba_to_full_at", attention.moba_to_full_at, within(0, 1),
                 "fraction of the planned tokens after which every layer uses full attention "
                 "(1 = never)"),
  };
  return fields;
}

void ModelConfig::validate() const {
  static const schema::Schema<ModelConfig> ranges(model_fields(), "docs/trainer.md");
  ranges.check_ranges(*this);
  check_relations();
}

void ModelConfig::check_relations() const {
  MOBA_CHECK(heads % kv() == 0, "model.heads (", heads, ") must be a multiple of model.kv_heads (",
             kv(), ")");
  MOBA_CHECK(head_dim != 0 || width % heads == 0, "model.width (", width,
             ") is not a multiple of model.heads (", heads, "); set model.head_dim");
  MOBA_CHECK(hd() >= 2 && hd() % 2 == 0,
             "model.head_dim must be even and >= 2 (RoPE rotates pairs), got ", hd());
  MOBA_CHECK(attention.full_attention_last_layers <= layers,
             "attention.full_attention_last_layers must be in [0, model.layers = ", layers,
             "], got ", attention.full_attention_last_layers);
}

std::vector<std::string> cuda_kernel_limits(const ModelConfig& cfg0) {
  const ModelConfig c = cfg0.resolved();
  std::vector<std::string> why;
  auto num = [](int64_t x) { return std::to_string(x); };
  if (!attn::cuda_head_dim_supported(c.head_dim))
    why.push_back("model.head_dim = " + num(c.head_dim) +
                  ": the GPU attention kernels take head dims 64 and 128");
  bool moba = false;
  for (int64_t l = 0; l < c.layers; ++l) moba = moba || layer_uses_moba(c, l, true);
  const int64_t S = c.attention.block_size, K = c.attention.top_k;
  if (moba && (S < attn::kCudaMinBlockSize || (S & (S - 1)) != 0))
    why.push_back("attention.block_size = " + num(S) +
                  ": the GPU MoBA kernels need a power of two >= " + num(attn::kCudaMinBlockSize));
  if (moba && K > attn::kCudaMaxTopK)
    why.push_back("attention.top_k = " + num(K) + ": the GPU MoBA kernels take at most " +
                  num(attn::kCudaMaxTopK));
  const std::pair<const char*, int64_t> widths[] = {{"model.width", c.width},
                                                    {"model.heads x model.head_dim", c.heads * c.head_dim},
                                                    {"model.kv_heads x model.head_dim", c.kv_heads * c.head_dim},
                                                    {"model.mlp_hidden", c.mlp_hidden},
                                                    {"model.vocab_size", c.vocab_size}};
  for (const auto& [what, w] : widths)
    if (w % kCudaWidthMultiple != 0)
      why.push_back(std::string(what) + " = " + num(w) + ": the GPU model needs a multiple of " +
                    num(kCudaWidthMultiple) + " (cuBLASLt's 16-byte rows)");
  return why;
}

bool layer_uses_moba(const ModelConfig& cfg, int64_t layer, bool moba_phase) {
  const AttentionConfig& a = cfg.attention;
  return a.kind == AttentionKind::moba && moba_phase &&
         layer < cfg.layers - a.full_attention_last_layers;
}

std::string attention_label(const ModelConfig& cfg) {
  const AttentionConfig& a = cfg.attention;
  if (a.kind == AttentionKind::moba && (a.full_attention_last_layers > 0 || a.moba_to_full_at < 1.0))
    return "hybrid";
  return attention_kind_name(a.kind);
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
