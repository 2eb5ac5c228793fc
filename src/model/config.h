// The model's shape: a Llama-style decoder (pre-norm blocks of RMSNorm, GQA attention with
// RoPE, RMSNorm, SwiGLU MLP; final RMSNorm; LM head, tied or not) and, per layer, full or
// MoBA attention. Plain data with validate(); the TOML reader lives in src/train/config.h.
#pragma once

#include <cstdint>
#include <string>

namespace moba::model {

enum class AttentionKind { full, moba };

struct AttentionConfig {
  AttentionKind kind = AttentionKind::moba;
  int64_t block_size = 512;  // S (MoBA only)
  int64_t top_k = 3;         // K, the current block included (MoBA only)
  // Layer-wise hybrid: the last N layers use full attention whatever `kind` says.
  int64_t full_attention_last_layers = 0;
  // MoBA-to-full switch: after this fraction of the planned training tokens every layer
  // uses full attention. 1.0 (the default) never switches.
  double moba_to_full_at = 1.0;
};

struct ModelConfig {
  int64_t vocab_size = 256;       // V
  int64_t width = 256;            // C
  int64_t layers = 4;             // L
  int64_t heads = 4;              // Hq
  int64_t kv_heads = 0;           // Hkv; 0 = Hq (no grouping)
  int64_t head_dim = 0;           // D; 0 = C / Hq
  int64_t mlp_hidden = 0;         // F; 0 = 8C/3 rounded up to mlp_multiple_of (Llama)
  int64_t mlp_multiple_of = 256;  // rounding of the automatic F
  int64_t seq_len = 1024;         // T, training context
  bool tied_embeddings = true;    // LM head = token embedding
  double rope_theta = 10000.0;
  double norm_eps = 1e-5;
  double init_std = 0.02;  // N(0, init_std^2) weights; output projections / sqrt(2L)
  AttentionConfig attention;

  // Fills the 0 (= automatic) fields; call before use. Idempotent.
  ModelConfig resolved() const;
  // Throws moba::Error naming the key (as in the TOML file) and the bad value.
  void validate() const;

  int64_t kv() const { return kv_heads ? kv_heads : heads; }
  int64_t hd() const { return head_dim ? head_dim : width / heads; }
  int64_t ffn() const;
};

// Does layer `layer` use MoBA? `moba_phase` is false once training passed moba_to_full_at.
bool layer_uses_moba(const ModelConfig& cfg, int64_t layer, bool moba_phase);

// "full", "moba" or "hybrid" (MoBA with full layers or a switch to full), as run.json.
std::string attention_label(const ModelConfig& cfg);

// Parameter counts. Non-embedding, as the MoBA paper (and Kaplan et al.) count them: every
// parameter except the token embedding and an untied LM head (both V x C), norms included.
struct ParamCounts {
  int64_t non_embedding = 0;
  int64_t total = 0;
  int64_t matmul = 0;  // weights used in matmuls per token, LM head included (for FLOPs)
};
ParamCounts param_counts(const ModelConfig& cfg);

// FLOPs of one training token, forward + backward, as executed on the matmuls: 6 x matmul
// weights (the LM head included). Attention's own FLOPs depend on the selection and are
// added by the model from attn::stats.
double matmul_flops_per_token(const ModelConfig& cfg);

}  // namespace moba::model
