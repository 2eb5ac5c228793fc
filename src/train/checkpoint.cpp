#include "train/checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <vector>

#include "core/error.h"
#include "train/safetensors.h"

namespace moba::train {
namespace fs = std::filesystem;
namespace {

constexpr int kFormat = 1;

std::vector<TensorView> views(const model::ParamLayout& layout, std::span<const float> flat,
                              const std::string& prefix) {
  std::vector<TensorView> v;
  for (const model::TensorInfo& t : layout.tensors)
    v.push_back({prefix + t.name, t.shape, flat.subspan(t.offset, t.size)});
  return v;
}

void restore(const SafetensorsFile& file, const std::string& path, const model::ParamLayout& layout,
             const std::string& prefix, std::span<float> flat) {
  for (const model::TensorInfo& t : layout.tensors) {
    const auto it = file.tensors.find(prefix + t.name);
    MOBA_CHECK(it != file.tensors.end(), "checkpoint file '", path, "' lacks tensor ",
               prefix + t.name, " (was it written by another model configuration?)");
    MOBA_CHECK(it->second.shape == t.shape, "checkpoint file '", path, "': tensor ",
               prefix + t.name, " has another shape than the model's (another configuration?)");
    std::copy(it->second.data.begin(), it->second.data.end(), flat.begin() + t.offset);
  }
  MOBA_CHECK(file.tensors.size() == layout.tensors.size(), "checkpoint file '", path, "' holds ",
             file.tensors.size(), " tensors, the model has ", layout.tensors.size());
}

fs::path readable_dir(const std::string& run_dir) {
  const fs::path dir = fs::path(run_dir) / "checkpoint";
  if (fs::exists(dir / "state.json")) return dir;
  const fs::path old = fs::path(run_dir) / "checkpoint.old";
  if (fs::exists(old / "state.json")) return old;  // a crash fell between the two renames
  return dir;
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
  f.flush();
  MOBA_CHECK(f.good(), "writing '", path.string(), "' failed");
}

}  // namespace

void save_checkpoint(const std::string& run_dir, const model::ParamLayout& layout,
                     std::span<const float> params, AdamW& adam, const TrainState& s) {
  const fs::path root(run_dir), tmp = root / "checkpoint.tmp", dir = root / "checkpoint",
                                old = root / "checkpoint.old";
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  const std::map<std::string, std::string> meta = {{"format", "moba-checkpoint"},
                                                   {"step", std::to_string(s.step)}};
  write_safetensors((tmp / "model.safetensors").string(), views(layout, params, ""), meta);
  std::vector<TensorView> opt = views(layout, adam.m(), "adam_m.");
  for (TensorView& v : views(layout, adam.v(), "adam_v.")) opt.push_back(std::move(v));
  write_safetensors((tmp / "optimizer.safetensors").string(), opt,
                    {{"adam_steps", std::to_string(adam.steps_done())}});
  const nlohmann::json state = {{"format", kFormat},
                                {"step", s.step},
                                {"tokens", s.tokens},
                                {"flops_6nd", s.flops_6nd},
                                {"flops_exec", s.flops_exec},
                                {"elapsed_s", s.elapsed_s},
                                {"next_batch", s.next_batch},
                                {"seed", s.seed},
                                {"adam_steps", adam.steps_done()}};
  write_text(tmp / "state.json", state.dump(2) + "\n");
  // The swap: state.json is written last, so a folder with it is complete.
  fs::remove_all(old);
  if (fs::exists(dir)) fs::rename(dir, old);
  fs::rename(tmp, dir);
  fs::remove_all(old);
}

bool has_checkpoint(const std::string& run_dir) {
  return fs::exists(readable_dir(run_dir) / "state.json");
}

namespace {

TrainState read_state(const fs::path& dir, AdamW* adam) {
  const std::string state_path = (dir / "state.json").string();
  std::ifstream f(state_path);
  MOBA_CHECK(f.good(), "no checkpoint to resume from: cannot read '", state_path, "'");
  nlohmann::json j;
  TrainState s;
  try {
    j = nlohmann::json::parse(f);
    MOBA_CHECK(j.at("format").get<int>() == kFormat, "checkpoint file '", state_path,
               "' has format ", j.at("format").dump(), ", this build reads ", kFormat);
    s.step = j.at("step").get<int64_t>();
    s.tokens = j.at("tokens").get<int64_t>();
    s.flops_6nd = j.at("flops_6nd").get<double>();
    s.flops_exec = j.at("flops_exec").get<double>();
    s.elapsed_s = j.at("elapsed_s").get<double>();
    s.next_batch = j.at("next_batch").get<uint64_t>();
    s.seed = j.at("seed").get<uint64_t>();
    if (adam) adam->set_steps_done(j.at("adam_steps").get<int64_t>());
  } catch (const nlohmann::json::exception& e) {
    MOBA_CHECK(false, "checkpoint file '", state_path, "' is corrupt: ", e.what());
  }
  return s;
}

void read_weights(const fs::path& dir, const TrainState& s, const model::ParamLayout& layout,
                  std::span<float> params) {
  const std::string model_path = (dir / "model.safetensors").string();
  const SafetensorsFile weights = read_safetensors(model_path);
  const auto step_it = weights.metadata.find("step");
  MOBA_CHECK(step_it != weights.metadata.end() && step_it->second == std::to_string(s.step),
             "checkpoint file '", model_path, "' is not from step ", s.step, " of state.json");
  restore(weights, model_path, layout, "", params);
}

}  // namespace

TrainState load_checkpoint_weights(const std::string& run_dir, const model::ParamLayout& layout,
                                   std::span<float> params) {
  const fs::path dir = readable_dir(run_dir);
  const TrainState s = read_state(dir, nullptr);
  read_weights(dir, s, layout, params);
  return s;
}

TrainState load_checkpoint(const std::string& run_dir, const model::ParamLayout& layout,
                           std::span<float> params, AdamW& adam) {
  const fs::path dir = readable_dir(run_dir);
  const TrainState s = read_state(dir, &adam);
  read_weights(dir, s, layout, params);
  const std::string opt_path = (dir / "optimizer.safetensors").string();
  const SafetensorsFile opt = read_safetensors(opt_path);
  SafetensorsFile m, v;
  for (const auto& [name, t] : opt.tensors) {
    if (name.rfind("adam_m.", 0) == 0)
      m.tensors.emplace(name, t);
    else if (name.rfind("adam_v.", 0) == 0)
      v.tensors.emplace(name, t);
    else
      MOBA_CHECK(false, "checkpoint file '", opt_path, "' holds an unknown tensor ", name);
  }
  restore(m, opt_path, layout, "adam_m.", adam.m());
  restore(v, opt_path, layout, "adam_v.", adam.v());
  return s;
}

}  // namespace moba::train
