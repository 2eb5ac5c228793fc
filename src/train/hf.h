// Checkpoints both ways between a `moba train` run folder and a Hugging Face Llama folder
// (docs/hf.md): `moba export-hf` and `moba import-hf`.
//
// Our model is Llama's (docs/trainer.md): pre-norm RMSNorm (y = x / rms * w, eps inside
// the root), GQA attention with RoPE in the "rotate half" convention (element i pairs with
// i + D/2, as transformers' rotate_half), softmax scale D^-0.5, SwiGLU
// w_down(silu(w_gate x) * w_up x), final RMSNorm, LM head tied or not; linear weights stored
// (out, in) as PyTorch does. So tensors map one to one by name, with no permutation of the
// q/k projection rows and no change of any value.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/config.h"
#include "train/config.h"

namespace moba::train {

// (our name, HF name) of every stored tensor of the model, in the layout's order.
std::vector<std::pair<std::string, std::string>> hf_tensor_names(const model::ModelConfig& cfg);

// config.json of LlamaForCausalLM for the resolved model; `moba` key: block_size, top_k,
// moba_layers (the layers that run MoBA at the checkpoint's phase), full_attention_last_layers,
// moba_to_full_at, switched_to_full. Throws moba::Error for a model transformers cannot
// express (width not a multiple of heads).
nlohmann::json hf_config_json(const model::ModelConfig& resolved, bool moba_phase);

struct HfExportOptions {
  std::string run_dir, out_dir;
  bool tokenizer = true;  // write tokenizer files (false: weights and config only)
  std::string data_dir;   // the prepared data folder whose tokenizer to convert; empty:
                          // the run's config `data` (or RUN_DIR/hf_tokenizer after import-hf)
  bool force = false;     // write into an out_dir that is not empty
};

struct HfExportResult {
  std::string tokenizer;  // "byte", "bpe", "copied" (from RUN_DIR/hf_tokenizer), "none"
  size_t tensors = 0;
  int64_t step = 0;
};

// Writes config.json, model.safetensors (F32, HF names) and the tokenizer files; notes
// (e.g. "no tokenizer: synthetic data") go to `log` when not null.
HfExportResult export_hf(const HfExportOptions& opt, std::FILE* log);

// What import-hf sets on the continuation run; unset fields keep the base configuration's
// value (the --config file, else the defaults of docs/trainer.md).
struct HfImportOptions {
  std::string hf_dir, out_dir;
  std::string config_path;  // base run configuration (TOML); [model] is replaced by the HF model's
  std::string name, data, data_packing, attention;  // attention: "moba" or "full"
  int64_t block_size = 0, top_k = 0, full_attention_last_layers = -1;
  double moba_to_full_at = -1.0;
  int64_t seq_len = 0, steps = 0, tokens = 0, batch_size = 0, warmup_steps = -1;
  double lr = 0.0;
  uint64_t seed = 0;
};

// The HF model's architecture as our ModelConfig (attention settings left at defaults);
// refuses, naming them, settings our model does not have: an architecture other than
// LlamaForCausalLM, attention or MLP biases, hidden_act other than silu, RoPE scaling,
// sliding windows, a head_dim that is odd, heads not a multiple of kv heads.
model::ModelConfig model_from_hf_config(const nlohmann::json& config, const std::string& where);

// Reads HF_DIR (config.json, model.safetensors or model.safetensors.index.json with its
// shards; F32, BF16 and F16 read as float32) and writes OUT_DIR: config.toml, and a step-0
// checkpoint (the weights, zero AdamW moments) that `moba train --out OUT_DIR --resume`
// continues; tokenizer files of HF_DIR are kept in OUT_DIR/hf_tokenizer/ for export-hf.
// Missing, extra or misshaped tensors, a tied/untied mismatch, dtypes other than F32, BF16,
// F16: moba::Error naming them. Returns the resolved configuration written.
RunConfig import_hf(const HfImportOptions& opt, std::FILE* log);

}  // namespace moba::train
