// Checkpoints both ways (train/hf.h): tensor names, config.json, export then import gives the
// weights back, the refusals of import, half-precision safetensors, the checkpoint's phase.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <filesystem>
#include <fstream>
#include <random>

#include "core/error.h"
#include "model/params.h"
#include "train/adamw.h"
#include "train/checkpoint.h"
#include "train/hf.h"
#include "train/safetensors.h"
#include "train/run_dir.h"

namespace moba::train {
namespace {
namespace fs = std::filesystem;
using testing::TempDir;

RunConfig tiny(bool tied) {
  RunConfig c;
  c.name = "hf-test";
  c.model.vocab_size = 40;
  c.model.width = 16;
  c.model.layers = 2;
  c.model.heads = 4;
  c.model.kv_heads = 2;
  c.model.mlp_hidden = 24;
  c.model.seq_len = 32;
  c.model.tied_embeddings = tied;
  c.model.rope_theta = 500.0;
  c.model.attention.block_size = 8;
  c.model.attention.top_k = 2;
  c.model.attention.full_attention_last_layers = 1;
  c.train.steps = 10;
  c.train.batch_size = 2;
  return c.resolved();
}

// A run folder with random weights at step 10 (as `moba train` leaves it).
std::vector<float> make_run(const std::string& dir, const RunConfig& cfg) {
  const model::ParamLayout layout = model::make_param_layout(cfg.model);
  std::vector<float> params(layout.total);
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 0.1f);
  for (float& p : params) p = nd(rng);
  fs::create_directories(dir);
  std::ofstream(fs::path(dir) / "config.toml") << to_toml(cfg);
  AdamW adam(layout, cfg.train);
  TrainState s;
  s.step = 10;
  s.tokens = cfg.tokens_planned();
  s.seed = cfg.train.seed;
  save_checkpoint(dir, layout, params, adam, s);
  return params;
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream f(path);
  return nlohmann::json::parse(f);
}

void write_json(const std::string& path, const nlohmann::json& j) { std::ofstream(path) << j.dump(); }

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(HfNames, MapEveryTensorOnce) {
  for (bool tied : {true, false}) {
    const RunConfig cfg = tiny(tied);
    const auto names = hf_tensor_names(cfg.model);
    const model::ParamLayout layout = model::make_param_layout(cfg.model);
    ASSERT_EQ(names.size(), layout.tensors.size());
    for (const auto& [ours, hf] : names) EXPECT_NE(layout.find(ours), nullptr) << ours;
    EXPECT_EQ(names.front().second, "model.embed_tokens.weight");
    EXPECT_EQ(names[2].second, "model.layers.0.self_attn.q_proj.weight");
    EXPECT_EQ(names.back().second, tied ? "model.norm.weight" : "lm_head.weight");
  }
}

TEST(HfConfig, HoldsTheModelAndTheMobaKey) {
  const RunConfig cfg = tiny(false);
  const nlohmann::json j = hf_config_json(cfg.model, true);
  EXPECT_EQ(j["architectures"][0], "LlamaForCausalLM");
  EXPECT_EQ(j["hidden_size"], 16);
  EXPECT_EQ(j["intermediate_size"], 24);
  EXPECT_EQ(j["num_key_value_heads"], 2);
  EXPECT_EQ(j["head_dim"], 4);
  EXPECT_EQ(j["rope_parameters"]["rope_theta"], 500.0);
  EXPECT_EQ(j["max_position_embeddings"], 32);
  EXPECT_EQ(j["tie_word_embeddings"], false);
  EXPECT_EQ(j["moba"]["block_size"], 8);
  EXPECT_EQ(j["moba"]["top_k"], 2);
  EXPECT_EQ(j["moba"]["moba_layers"], nlohmann::json::array({0}));  // the last layer is full
  EXPECT_EQ(hf_config_json(cfg.model, false)["moba"]["moba_layers"], nlohmann::json::array());
  model::ModelConfig odd = cfg.model;
  odd.width = 18;  // head_dim 4 given, but 18 is no multiple of 4 heads
  EXPECT_NE(error_of([&] { hf_config_json(odd, true); }).find("not a multiple of model.heads"),
            std::string::npos);
}

TEST(HfConfig, ModelFromConfigReadsBothRopeKeys) {
  nlohmann::json j = hf_config_json(tiny(true).model, true);
  j.erase("rope_parameters");
  j["rope_theta"] = 1234.0;
  EXPECT_EQ(model_from_hf_config(j, "c").rope_theta, 1234.0);
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 99.0}};
  EXPECT_EQ(model_from_hf_config(j, "c").rope_theta, 99.0);
  j["rope_parameters"]["rope_type"] = "yarn";
  EXPECT_NE(error_of([&] { model_from_hf_config(j, "c"); }).find("'yarn' is not supported"),
            std::string::npos);
}

TEST(HfExportImport, RoundTripGivesTheWeightsBack) {
  for (bool tied : {true, false}) {
    TempDir tmp;
    const RunConfig cfg = tiny(tied);
    const std::vector<float> params = make_run(tmp / "run", cfg);
    const HfExportResult r = export_hf({tmp / "run", tmp / "hf", true, "", false}, nullptr);
    EXPECT_EQ(r.tokenizer, "none");  // synthetic data
    EXPECT_EQ(r.step, 10);
    const SafetensorsFile st = read_safetensors(tmp / "hf/model.safetensors");
    EXPECT_EQ(st.metadata.at("format"), "pt");
    EXPECT_EQ(st.tensors.count("lm_head.weight"), tied ? 0u : 1u);
    HfImportOptions o;
    o.hf_dir = tmp / "hf";
    o.out_dir = tmp / "back";
    o.steps = 3;
    const RunConfig back = import_hf(o, nullptr);
    EXPECT_EQ(back.model.tied_embeddings, tied);
    EXPECT_EQ(back.model.seq_len, 32);  // min(1024, max_position_embeddings)
    const model::ParamLayout layout = model::make_param_layout(back.model);
    std::vector<float> got(layout.total);
    const TrainState s = load_checkpoint_weights(tmp / "back", layout, got);
    EXPECT_EQ(s.step, 0);
    EXPECT_EQ(got, params);
    // and a second export writes the same file
    export_hf({tmp / "back", tmp / "hf2", true, "", false}, nullptr);
    const SafetensorsFile st2 = read_safetensors(tmp / "hf2/model.safetensors");
    for (const auto& [name, t] : st.tensors) EXPECT_EQ(st2.tensors.at(name).data, t.data) << name;
  }
}

TEST(HfImport, SetsTheContinuation) {
  TempDir tmp;
  make_run(tmp / "run", tiny(true));
  export_hf({tmp / "run", tmp / "hf", true, "", false}, nullptr);
  HfImportOptions o;
  o.hf_dir = tmp / "hf";
  o.out_dir = tmp / "back";
  o.attention = "full";
  o.block_size = 4;
  o.top_k = 3;
  o.seq_len = 16;
  o.steps = 7;
  o.lr = 5e-4;
  const RunConfig c = import_hf(o, nullptr);
  EXPECT_EQ(c.model.attention.kind, model::AttentionKind::full);
  EXPECT_EQ(c.model.attention.block_size, 4);
  EXPECT_EQ(c.model.attention.top_k, 3);
  EXPECT_EQ(c.model.seq_len, 16);
  EXPECT_EQ(c.train.steps, 7);
  EXPECT_EQ(c.train.lr, 5e-4);
  EXPECT_EQ(load_config(tmp / "back/config.toml").train.steps, 7);
  EXPECT_TRUE(has_checkpoint(tmp / "back"));
  o.out_dir = tmp / "back2";
  o.steps = 0;
  EXPECT_NE(error_of([&] { import_hf(o, nullptr); }).find("--steps"), std::string::npos);
}

TEST(HfImport, RefusesWhatOurModelLacks) {
  TempDir tmp;
  make_run(tmp / "run", tiny(false));
  export_hf({tmp / "run", tmp / "hf", true, "", false}, nullptr);
  const nlohmann::json good = read_json(tmp / "hf/config.json");
  const std::vector<std::pair<nlohmann::json, std::string>> cases = {
      {{{"attention_bias", true}}, "attention_bias = true"},
      {{{"mlp_bias", true}}, "mlp_bias = true"},
      {{{"hidden_act", "gelu"}}, "hidden_act 'gelu'"},
      {{{"rope_scaling", {{"type", "linear"}, {"factor", 2.0}}}}, "'linear' is not supported"},
      {{{"architectures", {"GPT2LMHeadModel"}}}, "GPT2LMHeadModel"},
      {{{"tie_word_embeddings", true}}, "lm_head.weight differs"},
      {{{"head_dim", 2}}, "has shape"},
      {{{"intermediate_size", 20}}, "has shape"},
  };
  int i = 0;
  for (const auto& [change, message] : cases) {
    nlohmann::json c = good;
    c.update(change);
    write_json(tmp / "hf/config.json", c);
    HfImportOptions o;
    o.hf_dir = tmp / "hf";
    o.out_dir = tmp / ("out" + std::to_string(i++));
    o.steps = 1;
    const std::string err = error_of([&] { import_hf(o, nullptr); });
    EXPECT_NE(err.find(message), std::string::npos) << err;
    EXPECT_FALSE(fs::exists(fs::path(o.out_dir) / "checkpoint"));
  }
}

// A safetensors file with one tensor of raw 16-bit values.
void write_half(const std::string& path, const std::string& dtype, std::vector<uint16_t> v) {
  std::string header = nlohmann::json{{"t", {{"dtype", dtype},
                                             {"shape", {v.size()}},
                                             {"data_offsets", {0, 2 * v.size()}}}}}
                           .dump();
  header.append((8 - header.size() % 8) % 8, ' ');
  std::ofstream f(path, std::ios::binary);
  uint64_t n = header.size();
  f.write(reinterpret_cast<const char*>(&n), 8);
  f << header;
  f.write(reinterpret_cast<const char*>(v.data()), 2 * v.size());
}

TEST(Safetensors, ReadsHalfPrecisionAsFloat) {
  TempDir tmp;
  // bf16: 1.0, -2.5, 3.140625; f16: 1.0, -2.5, 65504 (max), 2^-24 (smallest subnormal), inf
  write_half(tmp / "bf16.safetensors", "BF16", {0x3f80, 0xc020, 0x4049});
  write_half(tmp / "f16.safetensors", "F16", {0x3c00, 0xc100, 0x7bff, 0x0001, 0x7c00});
  EXPECT_EQ(read_safetensors(tmp / "bf16.safetensors", true).tensors.at("t").data,
            (std::vector<float>{1.0f, -2.5f, 3.140625f}));
  const auto f16 = read_safetensors(tmp / "f16.safetensors", true).tensors.at("t").data;
  EXPECT_EQ(f16[0], 1.0f);
  EXPECT_EQ(f16[1], -2.5f);
  EXPECT_EQ(f16[2], 65504.0f);
  EXPECT_EQ(f16[3], std::ldexp(1.0f, -24));
  EXPECT_TRUE(std::isinf(f16[4]));
  EXPECT_NE(error_of([&] { read_safetensors(tmp / "bf16.safetensors"); }).find("only F32 is read"),
            std::string::npos);
  write_half(tmp / "i16.safetensors", "I16", {1});
  EXPECT_NE(error_of([&] { read_safetensors(tmp / "i16.safetensors", true); })
                .find("dtype I16, only F32, BF16 and F16"),
            std::string::npos);
}

}  // namespace
}  // namespace moba::train
