// `moba import-hf`: a Hugging Face Llama folder as a run folder that `moba train --resume`
// continues (hf.h).
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/safe_io.h"
#include "model/params.h"
#include "train/adamw.h"
#include "train/checkpoint.h"
#include "train/hf.h"
#include "train/safetensors.h"

namespace moba::train {
namespace fs = std::filesystem;
namespace {

nlohmann::json read_json(const fs::path& path) {
  std::ifstream f(path);
  MOBA_CHECK(f.good(), "import-hf: cannot read '", path.string(), "'");
  try {
    return nlohmann::json::parse(f);
  } catch (const nlohmann::json::exception& e) {
    MOBA_CHECK(false, "import-hf: '", path.string(), "' is not valid JSON (", e.what(), ")");
  }
  return {};
}

std::string shape_text(const std::vector<int64_t>& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

// Every tensor of the checkpoint, from model.safetensors or the shards of its index.
std::map<std::string, LoadedTensor> read_hf_tensors(const fs::path& dir) {
  std::vector<fs::path> files;
  const fs::path single = dir / "model.safetensors", index = dir / "model.safetensors.index.json";
  if (fs::exists(single)) {
    files.push_back(single);
  } else if (fs::exists(index)) {
    std::set<std::string> shards;
    const nlohmann::json j = read_json(index);
    try {
      for (const auto& [name, file] : j.at("weight_map").items())
        shards.insert(file.get<std::string>());
    } catch (const nlohmann::json::exception& e) {
      MOBA_CHECK(false, "import-hf: '", index.string(), "' has no valid weight_map (", e.what(), ")");
    }
    for (const std::string& s : shards) files.push_back(dir / s);
  } else {
    MOBA_CHECK(!fs::exists(dir / "pytorch_model.bin"), "import-hf: '", dir.string(),
               "' holds pytorch_model.bin only; save the model as safetensors first "
               "(model.save_pretrained(dir, safe_serialization=True))");
    MOBA_CHECK(false, "import-hf: '", dir.string(),
               "' has no model.safetensors (nor model.safetensors.index.json)");
  }
  std::map<std::string, LoadedTensor> all;
  for (const fs::path& f : files) {
    SafetensorsFile st = read_safetensors(f.string(), /*convert_half=*/true);
    for (auto& [name, t] : st.tensors) {
      MOBA_CHECK(!all.count(name), "import-hf: tensor ", name, " appears in two files");
      all.emplace(name, std::move(t));
    }
  }
  return all;
}

template <typename T>
T get_or(const nlohmann::json& j, const char* key, T fallback) {
  const auto it = j.find(key);
  return it == j.end() || it->is_null() ? fallback : it->get<T>();
}

void copy_if_exists(const fs::path& from, const fs::path& to_dir) {
  if (!fs::exists(from)) return;
  fs::create_directories(to_dir);
  fs::copy_file(from, to_dir / from.filename(), fs::copy_options::overwrite_existing);
}

}  // namespace

model::ModelConfig model_from_hf_config(const nlohmann::json& j, const std::string& where) {
  model::ModelConfig m;
  try {
    if (j.contains("architectures") && !j["architectures"].is_null()) {
      bool llama = false;
      std::string names;
      for (const auto& a : j["architectures"]) {
        names += (names.empty() ? "" : ", ") + a.get<std::string>();
        llama = llama || a.get<std::string>() == "LlamaForCausalLM";
      }
      MOBA_CHECK(llama, where, ": architecture ", names,
                 " is not supported (only LlamaForCausalLM)");
    }
    const std::string type = get_or<std::string>(j, "model_type", "llama");
    MOBA_CHECK(type == "llama", where, ": model_type '", type, "' is not supported (only llama)");
    const std::string act = get_or<std::string>(j, "hidden_act", "silu");
    MOBA_CHECK(act == "silu", where, ": hidden_act '", act, "' is not supported (only silu: SwiGLU)");
    MOBA_CHECK(!get_or<bool>(j, "attention_bias", false), where,
               ": attention_bias = true is not supported (our attention has no biases)");
    MOBA_CHECK(!get_or<bool>(j, "mlp_bias", false), where,
               ": mlp_bias = true is not supported (our MLP has no biases)");
    MOBA_CHECK(!j.contains("sliding_window") || j["sliding_window"].is_null(), where,
               ": sliding_window = ", j.value("sliding_window", nlohmann::json()).dump(),
               " is not supported");
    MOBA_CHECK(!j.contains("quantization_config"), where,
               ": quantized checkpoints (quantization_config) are not supported");
    double theta = get_or<double>(j, "rope_theta", 10000.0);
    for (const char* key : {"rope_scaling", "rope_parameters"}) {
      if (!j.contains(key) || j[key].is_null()) continue;
      const nlohmann::json& r = j[key];
      const std::string rt = r.contains("rope_type") ? r["rope_type"].get<std::string>()
                                                      : get_or<std::string>(r, "type", "default");
      MOBA_CHECK(rt == "default", where, ": ", key, " of type '", rt,
                 "' is not supported (only plain RoPE, rope_type 'default')");
      theta = get_or<double>(r, "rope_theta", theta);
    }
    for (const char* key : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                            "num_attention_heads"})
      MOBA_CHECK(j.contains(key) && j[key].is_number_integer(), where, ": ", key,
                 " is missing or not an integer");
    m.vocab_size = j["vocab_size"].get<int64_t>();
    m.width = j["hidden_size"].get<int64_t>();
    m.mlp_hidden = j["intermediate_size"].get<int64_t>();
    m.layers = j["num_hidden_layers"].get<int64_t>();
    m.heads = j["num_attention_heads"].get<int64_t>();
    m.kv_heads = get_or<int64_t>(j, "num_key_value_heads", m.heads);
    m.head_dim = get_or<int64_t>(j, "head_dim", m.heads > 0 ? m.width / m.heads : 0);
    m.tied_embeddings = get_or<bool>(j, "tie_word_embeddings", false);  // LlamaConfig's default
    m.rope_theta = theta;
    m.norm_eps = get_or<double>(j, "rms_norm_eps", 1e-6);
    m.init_std = get_or<double>(j, "initializer_range", 0.02);
    m.seq_len = std::min<int64_t>(get_or<int64_t>(j, "max_position_embeddings", 1024), 1024);
  } catch (const nlohmann::json::exception& e) {
    MOBA_CHECK(false, where, ": unexpected value (", e.what(), ")");
  }
  MOBA_CHECK(m.head_dim >= 2 && m.head_dim % 2 == 0, where, ": head_dim ", m.head_dim,
             " is not supported (RoPE needs an even head_dim)");
  MOBA_CHECK(m.kv_heads >= 1 && m.heads % m.kv_heads == 0, where, ": num_attention_heads (",
             m.heads, ") is not a multiple of num_key_value_heads (", m.kv_heads, ")");
  try {
    m.validate();
  } catch (const Error& e) {
    MOBA_CHECK(false, where, ": the model does not fit ours: ", e.what());
  }
  return m;
}

RunConfig import_hf(const HfImportOptions& o, std::FILE* log) {
  MOBA_CHECK(!o.hf_dir.empty() && !o.out_dir.empty(), "import-hf: HF_DIR and --out are required");
  const fs::path dir(o.hf_dir), out(o.out_dir);
  MOBA_CHECK(fs::is_directory(dir), "import-hf: '", o.hf_dir, "' is not a folder");
  const fs::path config_path = dir / "config.json";
  MOBA_CHECK(fs::exists(config_path), "import-hf: '", o.hf_dir, "' has no config.json");
  const nlohmann::json hf_config = read_json(config_path);

  // The continuation's configuration: the base file (or the defaults), the HF model, flags.
  RunConfig cfg = o.config_path.empty() ? RunConfig{} : load_config(o.config_path);
  const model::ModelConfig base = cfg.model;
  cfg.model = model_from_hf_config(hf_config, config_path.string());
  cfg.model.attention = base.attention;
  if (!o.config_path.empty()) cfg.model.seq_len = base.seq_len;
  if (o.config_path.empty()) cfg.name = dir.filename().empty() ? "imported" : dir.filename().string();
  if (!o.name.empty()) cfg.name = o.name;
  if (!o.data.empty()) cfg.data = o.data;
  if (!o.data_packing.empty()) cfg.data_packing = o.data_packing;
  model::AttentionConfig& a = cfg.model.attention;
  if (!o.attention.empty()) {
    MOBA_CHECK(o.attention == "moba" || o.attention == "full",
               "import-hf: --attention must be moba or full, got '", o.attention, "'");
    a.kind = o.attention == "moba" ? model::AttentionKind::moba : model::AttentionKind::full;
  }
  if (o.block_size) a.block_size = o.block_size;
  if (o.top_k) a.top_k = o.top_k;
  if (o.full_attention_last_layers >= 0) a.full_attention_last_layers = o.full_attention_last_layers;
  if (o.moba_to_full_at >= 0.0) a.moba_to_full_at = o.moba_to_full_at;
  if (o.seq_len) cfg.model.seq_len = o.seq_len;
  if (o.steps || o.tokens) {
    cfg.train.steps = o.steps;
    cfg.train.tokens = o.tokens;
  }
  if (o.batch_size) cfg.train.batch_size = o.batch_size;
  if (o.warmup_steps >= 0) cfg.train.warmup_steps = o.warmup_steps;
  if (o.lr > 0.0) cfg.train.lr = o.lr;
  if (o.seed) cfg.train.seed = o.seed;
  MOBA_CHECK(cfg.train.steps > 0 || cfg.train.tokens > 0,
             "import-hf: say how long the continuation trains: --steps N or --tokens N "
             "(or a --config file that sets train.steps or train.tokens)");
  check_data_packing(cfg.data, cfg.data_packing);
  cfg.validate();
  cfg = cfg.resolved();
  const model::ModelConfig& m = cfg.model;

  // The weights, by name and shape.
  std::map<std::string, LoadedTensor> tensors = read_hf_tensors(dir);
  tensors.erase("model.rotary_emb.inv_freq");  // a buffer older transformers saved
  for (int64_t l = 0; l < m.layers; ++l)
    tensors.erase("model.layers." + std::to_string(l) + ".self_attn.rotary_emb.inv_freq");
  const auto embed = tensors.find("model.embed_tokens.weight");
  const auto head = tensors.find("lm_head.weight");
  if (m.tied_embeddings && head != tensors.end()) {
    MOBA_CHECK(embed != tensors.end() && head->second.shape == embed->second.shape &&
                   head->second.data == embed->second.data,
               "import-hf: tie_word_embeddings = true in config.json, but lm_head.weight differs "
               "from model.embed_tokens.weight (an untied checkpoint? set tie_word_embeddings = "
               "false)");
    tensors.erase(head);
  }
  MOBA_CHECK(m.tied_embeddings || head != tensors.end(), "import-hf: tie_word_embeddings = false "
             "in config.json, but the checkpoint has no lm_head.weight (a tied checkpoint? set "
             "tie_word_embeddings = true)");
  const model::ParamLayout layout = model::make_param_layout(m);
  std::vector<float> params(layout.total);
  std::string missing;
  for (const auto& [ours, hf] : hf_tensor_names(m)) {
    const model::TensorInfo* t = layout.find(ours);
    const auto it = tensors.find(hf);
    if (it == tensors.end()) {
      missing += (missing.empty() ? "" : ", ") + hf;
      continue;
    }
    MOBA_CHECK(it->second.shape == t->shape, "import-hf: tensor ", hf, " has shape ",
               shape_text(it->second.shape), ", config.json implies ", shape_text(t->shape),
               " (check head_dim, num_key_value_heads, intermediate_size)");
    std::copy(it->second.data.begin(), it->second.data.end(), params.begin() + t->offset);
    tensors.erase(it);
  }
  MOBA_CHECK(missing.empty(), "import-hf: the checkpoint lacks tensors: ", missing);
  if (!tensors.empty()) {
    std::string extra;
    for (const auto& [name, t] : tensors) extra += (extra.empty() ? "" : ", ") + name;
    MOBA_CHECK(false, "import-hf: the checkpoint holds tensors our model has no place for "
               "(biases? another architecture?): ", extra);
  }
  for (size_t i = 0; i < params.size(); ++i)
    MOBA_CHECK(std::isfinite(params[i]), "import-hf: tensor ", layout.tensor_at(i).name,
               " (ours) holds a non-finite value");

  // The run folder: config.toml and a step-0 checkpoint; train --resume takes it from there.
  if (fs::exists(out))
    MOBA_CHECK(fs::is_directory(out) && fs::is_empty(out), "import-hf: '", o.out_dir,
               "' already exists and is not empty; choose another --out");
  fs::create_directories(out);
  write_file_atomic((out / "config.toml").string(), run_config_text(cfg, o.out_dir));
  AdamW adam(layout, cfg.train);
  TrainState state;
  state.seed = cfg.train.seed;
  save_checkpoint(o.out_dir, layout, params, adam, state);
  // What export-hf gives back: the tokenizer files and the source config (token ids).
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                        "special_tokens_map.json"})
    copy_if_exists(dir / f, out / "hf_tokenizer");
  fs::copy_file(config_path, out / "hf_source_config.json", fs::copy_options::overwrite_existing);
  if (log) {
    std::fprintf(log, "import-hf: %s -> %s: %zu tensors, %lld layers, width %lld, heads %lld/%lld, "
                 "vocab %lld; continue with: moba train --out %s --resume\n",
                 o.hf_dir.c_str(), o.out_dir.c_str(), hf_tensor_names(m).size(),
                 static_cast<long long>(m.layers), static_cast<long long>(m.width),
                 static_cast<long long>(m.heads), static_cast<long long>(m.kv_heads),
                 static_cast<long long>(m.vocab_size), o.out_dir.c_str());
  }
  return cfg;
}

}  // namespace moba::train
