// Every parameter of the model lives in one flat array; a ParamLayout names its tensors
// (the names used in checkpoints and error messages) and says where each one starts.
// Gradients and AdamW moments use the same layout. Weights of linear maps are stored
// (out, in), as PyTorch does, so y = x W^T.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "model/config.h"

namespace moba::model {

struct TensorInfo {
  std::string name;            // e.g. "layers.3.attn.wq"
  std::vector<int64_t> shape;  // e.g. {Hq*D, C}
  size_t offset = 0;           // first element in the flat array
  size_t size = 0;             // number of elements
  bool decay = false;          // AdamW weight decay applies (matrices only, see adamw.h)
  double init_std = 0.0;       // N(0, init_std^2) at init; 0 means ones (norm weights)
};

// Offsets of one block's tensors in the flat array.
struct LayerOffsets {
  size_t attn_norm;  // (C)
  size_t wq;         // (Hq*D, C)
  size_t wk;         // (Hkv*D, C)
  size_t wv;         // (Hkv*D, C)
  size_t wo;         // (C, Hq*D)
  size_t mlp_norm;   // (C)
  size_t w_gate;     // (F, C)
  size_t w_up;       // (F, C)
  size_t w_down;     // (C, F)
};

struct ParamLayout {
  std::vector<TensorInfo> tensors;
  std::vector<LayerOffsets> layers;  // (L)
  size_t embed = 0;                  // (V, C)
  size_t final_norm = 0;             // (C)
  size_t lm_head = 0;                // (V, C); == embed when tied
  size_t total = 0;                  // elements in all

  const TensorInfo* find(const std::string& name) const;  // nullptr if absent
  // The tensor holding flat element i (for error messages).
  const TensorInfo& tensor_at(size_t i) const;
};

ParamLayout make_param_layout(const ModelConfig& cfg);

// Deterministic initialisation from `seed`: each tensor draws from its own generator
// (seeded by seed and its index), so adding a tensor does not shift the others.
template <typename Real>
void init_params(const ParamLayout& layout, uint64_t seed, std::span<Real> params);

}  // namespace moba::model
