// `moba export-hf`: a run folder's checkpoint as a Hugging Face Llama folder (hf.h).
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "data/tokenizer_hf.h"
#include "model/params.h"
#include "train/checkpoint.h"
#include "train/hf.h"
#include "train/safetensors.h"
#include "train/trainer.h"

namespace moba::train {
namespace fs = std::filesystem;

std::vector<std::pair<std::string, std::string>> hf_tensor_names(const model::ModelConfig& cfg) {
  std::vector<std::pair<std::string, std::string>> names = {{"embed", "model.embed_tokens.weight"}};
  const model::ModelConfig c = cfg.resolved();
  for (int64_t l = 0; l < c.layers; ++l) {
    const std::string ours = "layers." + std::to_string(l) + ".";
    const std::string hf = "model.layers." + std::to_string(l) + ".";
    names.emplace_back(ours + "attn_norm", hf + "input_layernorm.weight");
    names.emplace_back(ours + "attn.wq", hf + "self_attn.q_proj.weight");
    names.emplace_back(ours + "attn.wk", hf + "self_attn.k_proj.weight");
    names.emplace_back(ours + "attn.wv", hf + "self_attn.v_proj.weight");
    names.emplace_back(ours + "attn.wo", hf + "self_attn.o_proj.weight");
    names.emplace_back(ours + "mlp_norm", hf + "post_attention_layernorm.weight");
    names.emplace_back(ours + "mlp.w_gate", hf + "mlp.gate_proj.weight");
    names.emplace_back(ours + "mlp.w_up", hf + "mlp.up_proj.weight");
    names.emplace_back(ours + "mlp.w_down", hf + "mlp.down_proj.weight");
  }
  names.emplace_back("final_norm", "model.norm.weight");
  if (!c.tied_embeddings) names.emplace_back("lm_head", "lm_head.weight");
  return names;
}

nlohmann::json hf_config_json(const model::ModelConfig& cfg, bool moba_phase) {
  const model::ModelConfig c = cfg.resolved();
  // transformers' LlamaConfig refuses a hidden size that is not a multiple of the heads,
  // even with head_dim given.
  MOBA_CHECK(c.width % c.heads == 0, "export-hf: model.width (", c.width,
             ") is not a multiple of model.heads (", c.heads,
             "); transformers' LlamaConfig refuses such a model");
  const model::AttentionConfig& a = c.attention;
  nlohmann::json moba_layers = nlohmann::json::array();
  for (int64_t l = 0; l < c.layers; ++l)
    if (model::layer_uses_moba(c, l, moba_phase)) moba_layers.push_back(l);
  const nlohmann::json moba = {
      {"attention", model::attention_label(c)},
      {"block_size", a.block_size},
      {"top_k", a.top_k},
      {"moba_layers", moba_layers},
      {"full_attention_last_layers", a.full_attention_last_layers},
      {"moba_to_full_at", a.moba_to_full_at},
      {"switched_to_full", a.kind == model::AttentionKind::moba && !moba_phase},
  };
  return {
      {"architectures", {"LlamaForCausalLM"}},
      {"model_type", "llama"},
      {"hidden_size", c.width},
      {"intermediate_size", c.mlp_hidden},
      {"num_attention_heads", c.heads},
      {"num_key_value_heads", c.kv_heads},
      {"head_dim", c.head_dim},
      {"num_hidden_layers", c.layers},
      {"hidden_act", "silu"},
      {"rms_norm_eps", c.norm_eps},
      // transformers 5 reads rope_parameters; rope_theta is the 4.x key.
      {"rope_theta", c.rope_theta},
      {"rope_parameters", {{"rope_type", "default"}, {"rope_theta", c.rope_theta}}},
      {"rope_scaling", nullptr},
      {"vocab_size", c.vocab_size},
      {"max_position_embeddings", c.seq_len},
      {"tie_word_embeddings", c.tied_embeddings},
      {"attention_bias", false},
      {"mlp_bias", false},
      {"attention_dropout", 0.0},
      {"initializer_range", c.init_std},
      {"pretraining_tp", 1},
      {"use_cache", true},
      {"bos_token_id", nullptr},  // our tokenizers have no BOS/EOS
      {"eos_token_id", nullptr},
      {"pad_token_id", nullptr},
      {"torch_dtype", "float32"},
      {"dtype", "float32"},
      {"moba", moba},
  };
}

namespace {

void write_json(const fs::path& path, const nlohmann::json& j) {
  std::ofstream f(path);
  f << j.dump(2) << "\n";
  f.flush();
  MOBA_CHECK(f.good(), "writing '", path.string(), "' failed");
}

void note(std::FILE* log, const std::string& s) {
  if (log) std::fprintf(log, "%s\n", s.c_str());
}

// The tokenizer files: kept from import-hf, else converted from the data folder's tokenizer.
std::string export_tokenizer(const HfExportOptions& opt, const RunConfig& cfg, std::FILE* log) {
  const fs::path kept = fs::path(opt.run_dir) / "hf_tokenizer";
  if (opt.data_dir.empty() && fs::is_directory(kept)) {
    for (const auto& e : fs::directory_iterator(kept))
      if (e.is_regular_file())
        fs::copy_file(e.path(), fs::path(opt.out_dir) / e.path().filename(),
                      fs::copy_options::overwrite_existing);
    note(log, "tokenizer: the files import-hf kept in " + kept.string());
    return "copied";
  }
  const std::string data = opt.data_dir.empty() ? cfg.data : opt.data_dir;
  if (data.rfind("synthetic:", 0) == 0) {
    note(log, "tokenizer: none (the run trained on synthetic data '" + data + "')");
    return "none";
  }
  MOBA_CHECK(fs::exists(fs::path(data) / "manifest.json"), "export-hf: the run's data folder '",
             data, "' (its tokenizer) is not there; pass --data DIR (the folder made by "
             "`moba prepare`) or --no-tokenizer");
  const std::string kind = data::write_hf_tokenizer(data, opt.out_dir, cfg.model.seq_len);
  note(log, "tokenizer: " + kind + " (from " + data + ")");
  return kind;
}

}  // namespace

HfExportResult export_hf(const HfExportOptions& opt, std::FILE* log) {
  MOBA_CHECK(!opt.run_dir.empty() && !opt.out_dir.empty(), "export-hf: RUN_DIR and OUT_DIR are required");
  const fs::path config_path = fs::path(opt.run_dir) / "config.toml";
  MOBA_CHECK(fs::exists(config_path), "export-hf: '", opt.run_dir,
             "' is not a run folder (no config.toml)");
  MOBA_CHECK(has_checkpoint(opt.run_dir), "export-hf: '", opt.run_dir, "' holds no checkpoint");
  const RunConfig cfg = load_run_config(opt.run_dir).resolved();
  const model::ModelConfig& m = cfg.model;
  const model::ParamLayout layout = model::make_param_layout(m);
  std::vector<float> params(layout.total);
  const TrainState state = load_checkpoint_weights(opt.run_dir, layout, params);
  const bool moba_phase = last_step_used_moba(cfg, state);
  nlohmann::json config = hf_config_json(m, moba_phase);  // checks before writing
  // An imported run gives back the special token ids of the checkpoint it came from.
  const fs::path source = fs::path(opt.run_dir) / "hf_source_config.json";
  if (fs::exists(source)) {
    std::ifstream f(source);
    const nlohmann::json src = nlohmann::json::parse(f, nullptr, /*allow_exceptions=*/false);
    if (src.is_object())
      for (const char* key : {"bos_token_id", "eos_token_id", "pad_token_id"})
        if (src.contains(key)) config[key] = src[key];
  }

  const fs::path out(opt.out_dir);
  if (fs::exists(out)) {
    MOBA_CHECK(fs::is_directory(out), "export-hf: '", opt.out_dir, "' is not a folder");
    MOBA_CHECK(opt.force || fs::is_empty(out), "export-hf: '", opt.out_dir,
               "' is not empty (pass --force to write into it)");
  }
  fs::create_directories(out);
  std::vector<TensorView> views;
  for (const auto& [ours, hf] : hf_tensor_names(m)) {
    const model::TensorInfo* t = layout.find(ours);
    MOBA_CHECK(t, "export-hf: internal: no tensor ", ours);
    views.push_back({hf, t->shape, std::span<const float>(params).subspan(t->offset, t->size)});
  }
  // transformers refuses safetensors files without format metadata.
  write_safetensors((out / "model.safetensors").string(), views,
                    {{"format", "pt"}, {"moba_step", std::to_string(state.step)}});
  write_json(out / "config.json", config);
  HfExportResult r;
  r.tensors = views.size();
  r.step = state.step;
  r.tokenizer = opt.tokenizer ? export_tokenizer(opt, cfg, log) : "none";
  return r;
}

}  // namespace moba::train
