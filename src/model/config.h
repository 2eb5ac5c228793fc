// The model's shape: a Llama-style decoder (pre-norm blocks of RMSNorm, GQA attention with
// RoPE, RMSNorm, SwiGLU MLP; final RMSNorm; LM head, tied or not) and, per layer, full or
// MoBA attention. Plain data with validate(); its keys (model.*, attention.*) are declared
// once in model_fields(), from which src/train/config.h derives the TOML file.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "attention/layout.h"
#include "core/schema.h"

namespace moba::model {

enum class AttentionKind { full, moba };
// The one table of the attention kinds' names ("full", "moba"): the TOML key
// attention.kind, the sweep's attention list and state.json all spell them through it.
inline constexpr std::pair<AttentionKind, const char*> kAttentionKinds[] = {
    {AttentionKind::full, "full"}, {AttentionKind::moba, "moba"}};
const char* attention_kind_name(AttentionKind kind);
// Throws moba::Error naming `what` unless `name` is "full" or "moba".
AttentionKind parse_attention_kind(const std::string& name, const std::string& what);

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
  // Throws moba::Error naming the key (as in the TOML file) and the bad value: each field's
  // range (model_fields()) and the checks relating fields. Run once where a configuration
  // enters (the TOML reader, the sweep planner, the Python ops, the benches); the layers
  // below trust it.
  void validate() const;
  // The checks relating fields only (heads a multiple of kv_heads, ...), for a reader that
  // checked each field's range as it read it.
  void check_relations() const;

  int64_t kv() const { return kv_heads ? kv_heads : heads; }
  int64_t hd() const { return head_dim ? head_dim : width / heads; }
  int64_t ffn() const;
};

// Every key of the model (model.*) and its attention (attention.*): type, range, default
// (ModelConfig's), one line of documentation.
const std::vector<schema::Field<ModelConfig>>& model_fields();

// The GPU model's widths (model.width, heads x head_dim, kv_heads x head_dim, mlp_hidden,
// vocab_size) are multiples of 8: cuBLASLt's 16-byte bf16 rows. The attention kernels' own
// limits are in attention/layout.h.
inline constexpr int64_t kCudaWidthMultiple = 8;
// The limits of the GPU (CUDA) kernels, known in every build so that a CPU-only machine can
// plan a GPU run. One named reason per limit `cfg` breaks ("model.head_dim = 6: the GPU attention kernels
// take head dims 64 and 128"); empty when the GPU kernels can run it. attn::cuda and
// ModelCuda check through it.
std::vector<std::string> cuda_kernel_limits(const ModelConfig& cfg);

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
