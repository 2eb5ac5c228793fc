#include "train/checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <vector>

#include "core/error.h"
#include "core/safe_io.h"
#include "data/hash.h"
#include "train/safetensors.h"

namespace moba::train {
namespace fs = std::filesystem;
namespace {

// Format 2 adds "files" to state.json: each tensor file's size and FNV-1a 64 checksum,
// verified before the file is read. Format 1 (no checksums) still loads.
constexpr int kFormat = 2;
constexpr const char* kTensorFiles[] = {"model.safetensors", "optimizer.safetensors"};

struct FileSum {
  uint64_t bytes = 0, fnv = data::kFnvBasis;
};

FileSum file_sum(const fs::path& path) {
  require_regular_file(path.string(), "checkpoint file");
  std::ifstream f(path, std::ios::binary);
  MOBA_CHECK(f.good(), "cannot read checkpoint file '", path.string(), "'");
  FileSum s;
  std::vector<char> buf(1 << 20);
  while (f) {
    f.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    const auto n = static_cast<size_t>(f.gcount());
    s.fnv = data::fnv1a64(buf.data(), n, s.fnv);
    s.bytes += n;
  }
  return s;
}

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

// The step of a complete checkpoint folder (state.json, written last, parses), or -1.
int64_t complete_step(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_regular_file(dir / "state.json", ec)) return -1;  // a FIFO would block
  try {
    return nlohmann::json::parse(read_regular_file((dir / "state.json").string(), "state"))
        .at("step")
        .get<int64_t>();
  } catch (const nlohmann::json::exception&) {
    return -1;
  } catch (const Error&) {
    return -1;
  }
}

// Which folder holds the checkpoint to load. `checkpoint` when complete; otherwise a crash
// fell inside a save's swap, and the newest complete one of checkpoint.old (the previous
// checkpoint, renamed away) and checkpoint.tmp (the new one, complete but not yet renamed in).
fs::path readable_dir(const std::string& run_dir) {
  const fs::path root(run_dir), dir = root / "checkpoint";
  if (complete_step(dir) >= 0) return dir;
  fs::path best = dir;
  int64_t best_step = -1;
  for (const char* name : {"checkpoint.old", "checkpoint.tmp"}) {
    const int64_t st = complete_step(root / name);
    if (st >= 0 && st >= best_step) best = root / name, best_step = st;
  }
  return best;
}

void write_text(const fs::path& path, const std::string& text) {
  // Through a temporary name: a crash mid-write never leaves a torn state.json, whose
  // presence marks a checkpoint folder complete. The temporary is created exclusively and
  // removed on failure (core/safe_io.h).
  const std::string part = path.string() + ".part";
  write_new_file(part, text.data(), text.size());
  fs::rename(part, path);
}

}  // namespace

void save_checkpoint(const std::string& run_dir, const model::ParamLayout& layout,
                     std::span<const float> params, AdamW& adam, const TrainState& s) {
  const fs::path root(run_dir), tmp = root / "checkpoint.tmp", dir = root / "checkpoint",
                                old = root / "checkpoint.old";
  // After a crash inside an earlier swap the complete checkpoint may be checkpoint.old or
  // checkpoint.tmp: move it to checkpoint first, so that the steps below never delete the
  // only complete copy (two crashes in a row once lost it).
  const fs::path current = readable_dir(run_dir);
  if (current != dir && complete_step(current) >= 0) {
    fs::remove_all(dir);
    fs::rename(current, dir);
  }
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  try {
    const std::map<std::string, std::string> meta = {{"format", "moba-checkpoint"},
                                                     {"step", std::to_string(s.step)}};
    write_safetensors((tmp / "model.safetensors").string(), views(layout, params, ""), meta);
    std::vector<TensorView> opt = views(layout, adam.m(), "adam_m.");
    for (TensorView& v : views(layout, adam.v(), "adam_v.")) opt.push_back(std::move(v));
    write_safetensors((tmp / "optimizer.safetensors").string(), opt,
                      {{"adam_steps", std::to_string(adam.steps_done())}});
    nlohmann::json files = nlohmann::json::object();
    for (const char* name : kTensorFiles) {
      const FileSum sum = file_sum(tmp / name);
      files[name] = {{"bytes", sum.bytes}, {"fnv1a64", data::hex64(sum.fnv)}};
    }
    const nlohmann::json state = {{"format", kFormat},
                                  {"step", s.step},
                                  {"tokens", s.tokens},
                                  {"flops_6nd", s.flops_6nd},
                                  {"flops_exec", s.flops_exec},
                                  {"elapsed_s", s.elapsed_s},
                                  {"next_batch", s.next_batch},
                                  {"seed", s.seed},
                                  {"adam_steps", adam.steps_done()},
                                  {"attention", s.attention},
                                  {"files", files}};
    write_text(tmp / "state.json", state.dump(2) + "\n");
  } catch (...) {
    // A failed save (a full disk) leaves no partial checkpoint.tmp behind; the last complete
    // checkpoint is untouched. The first error is the one reported.
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
  // The swap: state.json is written last, so a folder with it is complete. At every
  // instant checkpoint, or else checkpoint.old or checkpoint.tmp, is complete
  // (readable_dir finds it).
  fs::remove_all(old);
  if (fs::exists(dir)) fs::rename(dir, old);
  fs::rename(tmp, dir);
  fs::remove_all(old);
}

bool has_checkpoint(const std::string& run_dir) { return checkpoint_step(run_dir) >= 0; }

int64_t checkpoint_step(const std::string& run_dir) {
  return complete_step(readable_dir(run_dir));
}

namespace {

TrainState read_state(const fs::path& dir, AdamW* adam) {
  const std::string state_path = (dir / "state.json").string();
  MOBA_CHECK(fs::exists(state_path), "no checkpoint to resume from: cannot read '", state_path,
             "'");
  const std::string text = read_regular_file(state_path, "checkpoint state");
  nlohmann::json j;
  TrainState s;
  try {
    j = nlohmann::json::parse(text);
    const int format = j.at("format").get<int>();
    MOBA_CHECK(format == 1 || format == kFormat, "checkpoint file '", state_path,
               "' has format ", j.at("format").dump(), ", this build reads 1 and ", kFormat);
    if (format >= 2)
      for (const char* name : kTensorFiles) {
        const nlohmann::json& want = j.at("files").at(name);
        const FileSum got = file_sum(dir / name);
        MOBA_CHECK(got.bytes == want.at("bytes").get<uint64_t>() &&
                       data::hex64(got.fnv) == want.at("fnv1a64").get<std::string>(),
                   "checkpoint file '", (dir / name).string(), "' is corrupt or truncated: ", got.bytes,
                   " bytes with checksum ", data::hex64(got.fnv), ", state.json records ",
                   want.at("bytes").dump(), " bytes with checksum ",
                   want.at("fnv1a64").get<std::string>());
      }
    s.step = j.at("step").get<int64_t>();
    s.tokens = j.at("tokens").get<int64_t>();
    MOBA_CHECK(s.step >= 0 && s.tokens >= 0 && j.at("next_batch").get<int64_t>() >= 0,
               "checkpoint file '", state_path, "' is corrupt: negative step, tokens or next_batch");
    s.flops_6nd = j.at("flops_6nd").get<double>();
    s.flops_exec = j.at("flops_exec").get<double>();
    s.elapsed_s = j.at("elapsed_s").get<double>();
    s.next_batch = j.at("next_batch").get<uint64_t>();
    s.seed = j.at("seed").get<uint64_t>();
    s.attention = j.value("attention", std::string());
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

TrainState load_checkpoint_folder_weights(const std::string& checkpoint_dir,
                                          const model::ParamLayout& layout,
                                          std::span<float> params) {
  const fs::path dir(checkpoint_dir);
  MOBA_CHECK(fs::is_directory(dir), "checkpoint '", checkpoint_dir, "' is not a folder");
  MOBA_CHECK(complete_step(dir) >= 0, "checkpoint '", checkpoint_dir,
             "' is not a complete checkpoint folder (no readable state.json beside "
             "model.safetensors)");
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
