#include "model/params.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "core/error.h"

namespace moba::model {

const TensorInfo* ParamLayout::find(const std::string& name) const {
  for (const TensorInfo& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

const TensorInfo& ParamLayout::tensor_at(size_t i) const {
  for (const TensorInfo& t : tensors)
    if (i >= t.offset && i < t.offset + t.size) return t;
  MOBA_CHECK(false, "parameter index ", i, " is out of range (", total, " parameters)");
}

ParamLayout make_param_layout(const ModelConfig& cfg0) {
  // cfg0 was validated where it entered (ModelConfig::validate); not again per layer built.
  const ModelConfig c = cfg0.resolved();
  const int64_t C = c.width, V = c.vocab_size, D = c.head_dim, F = c.mlp_hidden;
  const int64_t Hq = c.heads, Hkv = c.kv_heads;
  const double std0 = c.init_std;
  // GPT-2 / Llama practice: projections that write into the residual stream start smaller,
  // so that the residual's variance does not grow with depth.
  const double std_out = c.init_std / std::sqrt(2.0 * static_cast<double>(c.layers));
  ParamLayout p;
  auto add = [&](std::string name, std::vector<int64_t> shape, bool decay, double init) {
    TensorInfo t;
    t.name = std::move(name);
    t.shape = std::move(shape);
    t.size = 1;
    for (int64_t s : t.shape) t.size *= static_cast<size_t>(s);
    t.offset = p.total;
    t.decay = decay;
    t.init_std = init;
    p.total += t.size;
    p.tensors.push_back(t);
    return t.offset;
  };
  p.embed = add("embed", {V, C}, false, std0);
  for (int64_t l = 0; l < c.layers; ++l) {
    const std::string n = "layers." + std::to_string(l) + ".";
    LayerOffsets o;
    o.attn_norm = add(n + "attn_norm", {C}, false, 0.0);
    o.wq = add(n + "attn.wq", {Hq * D, C}, true, std0);
    o.wk = add(n + "attn.wk", {Hkv * D, C}, true, std0);
    o.wv = add(n + "attn.wv", {Hkv * D, C}, true, std0);
    o.wo = add(n + "attn.wo", {C, Hq * D}, true, std_out);
    o.mlp_norm = add(n + "mlp_norm", {C}, false, 0.0);
    o.w_gate = add(n + "mlp.w_gate", {F, C}, true, std0);
    o.w_up = add(n + "mlp.w_up", {F, C}, true, std0);
    o.w_down = add(n + "mlp.w_down", {C, F}, true, std_out);
    p.layers.push_back(o);
  }
  p.final_norm = add("final_norm", {C}, false, 0.0);
  p.lm_head = c.tied_embeddings ? p.embed : add("lm_head", {V, C}, true, std0);
  return p;
}

template <typename Real>
void init_params(const ParamLayout& layout, uint64_t seed, std::span<Real> params) {
  MOBA_CHECK(params.size() == layout.total, "parameter array has ", params.size(),
             " elements, the model needs ", layout.total);
  for (size_t i = 0; i < layout.tensors.size(); ++i) {
    const TensorInfo& t = layout.tensors[i];
    Real* x = params.data() + t.offset;
    if (t.init_std == 0.0) {
      std::fill(x, x + t.size, Real(1));
      continue;
    }
    std::mt19937_64 gen(seed * 1000003ULL + i);
    std::normal_distribution<double> dist(0.0, t.init_std);
    for (size_t j = 0; j < t.size; ++j) x[j] = static_cast<Real>(dist(gen));
  }
}

template void init_params<float>(const ParamLayout&, uint64_t, std::span<float>);
template void init_params<double>(const ParamLayout&, uint64_t, std::span<double>);

}  // namespace moba::model
