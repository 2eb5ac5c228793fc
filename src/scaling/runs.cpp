// Parsing of run folders. Every error names the file and line, and the field when one is
// at fault, because these files come from long runs that users cannot simply redo.
#include "scaling/runs.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/text_file.h"

namespace moba::scaling {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// "FILE:LINE" for messages.
std::string where(const fs::path& file, int64_t line) {
  return file.string() + ":" + std::to_string(line);
}

std::string type_of(const json& v) { return v.type_name(); }

// nlohmann's parse error without its "[json.exception...] parse error at line 1, column 9"
// prefix, which would contradict our FILE:LINE:COLUMN.
std::string parse_message(const json::parse_error& e) {
  const std::string w = e.what();
  const size_t at = w.find("parse error");
  const size_t colon = at == std::string::npos ? std::string::npos : w.find(": ", at);
  return colon == std::string::npos ? w : w.substr(colon + 2);
}

// "FILE:LINE:COLUMN" of byte offset `byte` (nlohmann's 1-based count of bytes read).
std::string where_byte(const fs::path& file, const std::string& text, size_t byte,
                       int64_t first_line = 1) {
  byte = std::min(byte == 0 ? 0 : byte - 1, text.size());
  const auto begin = text.begin(), pos = text.begin() + static_cast<std::ptrdiff_t>(byte);
  const int64_t line = first_line + std::count(begin, pos, '\n');
  const size_t line_start = text.rfind('\n', byte == 0 ? 0 : byte - 1);
  const size_t column = line_start == std::string::npos || byte == 0 ? byte + 1 : byte - line_start;
  return where(file, line) + ":" + std::to_string(column);
}

// Field readers: `at` is "FILE:LINE" of the object being read.
const json* find(const json& obj, const char* key) {
  auto it = obj.find(key);
  return it == obj.end() ? nullptr : &*it;
}

double get_number(const json& obj, const char* key, const std::string& at, bool required,
                  double fallback, bool null_is_nan = false) {
  const json* v = find(obj, key);
  if (!v) {
    MOBA_CHECK(!required, at, ": missing field '", key, "'");
    return fallback;
  }
  if (v->is_null() && null_is_nan) return kNaN;
  MOBA_CHECK(v->is_number(), at, ": field '", key, "' must be a number, got ", type_of(*v),
             " ", v->dump());
  return v->get<double>();
}

int64_t get_int(const json& obj, const char* key, const std::string& at, bool required) {
  const double x = get_number(obj, key, at, required, 0.0);
  MOBA_CHECK(std::isfinite(x) && x == std::floor(x), at, ": field '", key,
             "' must be an integer, got ", x);
  return static_cast<int64_t>(x);
}

std::string get_string(const json& obj, const char* key, const std::string& at) {
  const json* v = find(obj, key);
  MOBA_CHECK(v, at, ": missing field '", key, "'");
  MOBA_CHECK(v->is_string(), at, ": field '", key, "' must be a string, got ", type_of(*v), " ",
             v->dump());
  return v->get<std::string>();
}

RunInfo parse_run_json(const fs::path& file) {
  const std::string text = read_text_file(file);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    throw Error(where_byte(file, text, e.byte) + ": malformed JSON: " + parse_message(e));
  }
  const std::string at = file.string();
  MOBA_CHECK(j.is_object(), at, ": expected one JSON object, got ", type_of(j));
  RunInfo r;
  r.name = get_string(j, "name", at);
  r.attention = get_string(j, "attention", at);
  MOBA_CHECK(r.attention == "full" || r.attention == "moba" || r.attention == "hybrid", at,
             ": field 'attention' must be \"full\", \"moba\" or \"hybrid\", got \"", r.attention,
             "\"");
  r.status = get_string(j, "status", at);
  MOBA_CHECK(r.status == "running" || r.status == "finished" || r.status == "failed", at,
             ": field 'status' must be \"running\", \"finished\" or \"failed\", got \"", r.status,
             "\"");
  // What the study needs is required; the rest of the contract is read when present.
  r.layers = get_int(j, "layers", at, true);
  r.heads = get_int(j, "heads", at, true);
  r.width = get_int(j, "width", at, true);
  r.seq_len = get_int(j, "seq_len", at, true);
  r.params_non_embedding = get_int(j, "params_non_embedding", at, true);
  r.tokens_planned = get_number(j, "tokens_planned", at, true, 0.0);
  r.bytes_per_token = get_number(j, "bytes_per_token", at, true, 1.0);
  if (const json* v = find(j, "validation_data"); v && v->is_string()) r.validation_data = *v;
  MOBA_CHECK(r.bytes_per_token > 0, at, ": field 'bytes_per_token' must be > 0, got ",
             r.bytes_per_token);
  r.block_size = get_int(j, "block_size", at, false);
  r.top_k = get_int(j, "top_k", at, false);
  r.kv_heads = get_int(j, "kv_heads", at, false);
  r.head_dim = get_int(j, "head_dim", at, false);
  r.vocab_size = get_int(j, "vocab_size", at, false);
  r.params_total = get_int(j, "params_total", at, false);
  if (const json* c = find(j, "config"); c && c->is_object()) {
    const std::string cat = at + " (config)";
    if (const json* t = find(*c, "train"); t && t->is_object()) {
      r.lr = get_number(*t, "lr", cat, false, kNaN);
      r.steps = get_int(*t, "steps", cat, false);
      if (find(*t, "warmup_steps")) r.warmup_steps = get_int(*t, "warmup_steps", cat, false);
      if (const json* seed = find(*t, "seed")) {
        // An integer as the trainer writes it (uint64); the study's seeds fit int64.
        MOBA_CHECK(seed->is_number_unsigned() ||
                       (seed->is_number_integer() && seed->get<int64_t>() >= 0),
                   cat, ": field 'train.seed' must be an integer >= 0, got ", seed->dump());
        MOBA_CHECK(seed->get<uint64_t>() <= static_cast<uint64_t>(INT64_MAX), cat,
                   ": field 'train.seed' is above 2^63 - 1: ", seed->dump());
        r.seed = static_cast<int64_t>(seed->get<uint64_t>());
      }
    }
    if (const json* m = find(*c, "model"); m && m->is_object())
      if (const json* tied = find(*m, "tied_embeddings")) {
        MOBA_CHECK(tied->is_boolean(), cat, ": field 'model.tied_embeddings' must be true or "
                   "false, got ", tied->dump());
        r.tied_embeddings = tied->get<bool>() ? 1 : 0;
      }
  }
  return r;
}

// An optional array of numbers (nulls read as NaN); `name` in messages.
std::vector<double> number_array(const json& a, const std::string& at, const std::string& name) {
  MOBA_CHECK(a.is_array(), at, ": field '", name, "' must be an array, got ", type_of(a));
  std::vector<double> out;
  for (size_t i = 0; i < a.size(); ++i) {
    MOBA_CHECK(a[i].is_number() || a[i].is_null(), at, ": ", name, "[", i,
               "] must be a number or null, got ", type_of(a[i]));
    out.push_back(a[i].is_null() ? kNaN : a[i].get<double>());
  }
  return out;
}

ValPoint parse_val(const json& j, const std::string& at) {
  ValPoint p;
  p.step = get_int(j, "step", at, true);
  p.tokens = get_number(j, "tokens", at, true, 0.0);
  p.flops_6nd = get_number(j, "flops_6nd", at, true, 0.0);
  p.flops_exec = get_number(j, "flops_exec", at, true, 0.0);
  p.loss = get_number(j, "loss", at, true, kNaN, true);
  p.bucket_size = get_int(j, "bucket_size", at, false);
  if (const json* b = find(j, "bucket_losses"); b && !b->is_null()) {
    MOBA_CHECK(b->is_array(), at, ": field 'bucket_losses' must be an array, got ", type_of(*b));
    for (size_t i = 0; i < b->size(); ++i) {
      const json& e = (*b)[i];
      MOBA_CHECK(e.is_number() || e.is_null(), at, ": bucket_losses[", i,
                 "] must be a number or null, got ", type_of(e));
      p.bucket_losses.push_back(e.is_null() ? kNaN : e.get<double>());
    }
    MOBA_CHECK(p.bucket_losses.empty() || p.bucket_size > 0, at,
               ": 'bucket_losses' given without a positive 'bucket_size'");
  }
  p.trailing_loss = get_number(j, "trailing_loss", at, false, kNaN, true);
  p.windows = get_int(j, "windows", at, false);
  if (const json* w = find(j, "window_losses"); w && !w->is_null())
    p.window_losses = number_array(*w, at, "window_losses");
  if (const json* w = find(j, "window_bucket_losses"); w && !w->is_null()) {
    MOBA_CHECK(w->is_array(), at, ": field 'window_bucket_losses' must be an array, got ",
               type_of(*w));
    for (size_t i = 0; i < w->size(); ++i)
      p.window_bucket_losses.push_back(
          number_array((*w)[i], at, "window_bucket_losses[" + std::to_string(i) + "]"));
  }
  if (const json* h = find(j, "windows_hash"); h && h->is_string()) p.windows_hash = *h;
  MOBA_CHECK(p.window_losses.empty() || static_cast<int64_t>(p.window_losses.size()) == p.windows,
             at, ": 'window_losses' holds ", p.window_losses.size(), " values for ", p.windows,
             " windows");
  return p;
}

TrainPoint parse_train(const json& j, const std::string& at) {
  TrainPoint p;
  p.step = get_int(j, "step", at, true);
  p.tokens = get_number(j, "tokens", at, true, 0.0);
  p.loss = get_number(j, "loss", at, true, kNaN, true);
  p.flops_6nd = get_number(j, "flops_6nd", at, false, 0.0);
  p.flops_exec = get_number(j, "flops_exec", at, false, 0.0);
  p.elapsed_s = get_number(j, "elapsed_s", at, false, 0.0);
  return p;
}

// Keeps one point per step (the later line wins) in ascending step order.
template <typename Point>
void dedupe_by_step(std::vector<Point>& v, const char* kind, const fs::path& file,
                    std::vector<std::string>& warnings) {
  std::map<int64_t, Point> by_step;
  for (const Point& p : v) {
    if (by_step.count(p.step))
      warnings.push_back(file.string() + ": " + kind + " step " + std::to_string(p.step) +
                         " appears more than once; the later line is kept");
    by_step[p.step] = p;
  }
  v.clear();
  for (auto& [step, p] : by_step) v.push_back(p);
}

void parse_metrics(const fs::path& file, Run& run) {
  const std::string text = read_text_file(file);
  size_t pos = 0;
  int64_t line_no = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    const bool complete = end != std::string::npos;
    if (!complete) end = text.size();
    const std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string at = where(file, line_no);
    json j;
    try {
      j = json::parse(line);
    } catch (const json::parse_error& e) {
      // A line still being written by a live run: no newline yet.
      if (!complete && run.running()) {
        run.warnings.push_back(at + ": incomplete last line skipped (the run is still writing)");
        break;
      }
      throw Error(where_byte(file, line, e.byte, line_no) + ": malformed JSON: " + parse_message(e));
    }
    MOBA_CHECK(j.is_object(), at, ": expected a JSON object, got ", type_of(j));
    const std::string kind = get_string(j, "kind", at);
    if (kind == "val") run.val.push_back(parse_val(j, at));
    else if (kind == "train") run.train.push_back(parse_train(j, at));
    // Other kinds (future additions to the contract) are not the study's business.
  }
  dedupe_by_step(run.val, "val", file, run.warnings);
  dedupe_by_step(run.train, "train", file, run.warnings);
}

}  // namespace

Run read_run(const fs::path& dir) {
  Run run;
  run.dir = dir;
  MOBA_CHECK(fs::is_regular_file(dir / "run.json"), "'", dir.string(),
             "' is not a run folder: no run.json");
  run.info = parse_run_json(dir / "run.json");
  const fs::path metrics = dir / "metrics.jsonl";
  if (fs::is_regular_file(metrics)) parse_metrics(metrics, run);
  else run.warnings.push_back(dir.string() + ": no metrics.jsonl yet");
  if (run.val.empty()) run.warnings.push_back(dir.string() + ": no validation points");
  return run;
}

std::vector<Run> read_runs(const fs::path& runs_dir) {
  MOBA_CHECK(fs::is_directory(runs_dir), "runs folder '", runs_dir.string(),
             "' does not exist or is not a folder");
  std::vector<fs::path> dirs;
  if (fs::is_regular_file(runs_dir / "run.json")) {
    dirs.push_back(runs_dir);
  } else {
    for (auto it = fs::recursive_directory_iterator(runs_dir);
         it != fs::recursive_directory_iterator(); ++it) {
      if (!it->is_directory()) continue;
      if (it->path().filename() == "checkpoint" || it.depth() >= 2) it.disable_recursion_pending();
      if (it->path().filename() == "checkpoint") continue;
      if (fs::is_regular_file(it->path() / "run.json")) {
        dirs.push_back(it->path());
        it.disable_recursion_pending();  // a run folder does not hold runs
      }
    }
  }
  MOBA_CHECK(!dirs.empty(), "no run folders (with run.json) under '", runs_dir.string(), "'");
  std::vector<Run> runs;
  for (const fs::path& d : dirs) runs.push_back(read_run(d));
  std::sort(runs.begin(), runs.end(), [](const Run& a, const Run& b) {
    if (a.info.attention != b.info.attention) return a.info.attention < b.info.attention;
    if (a.info.params_non_embedding != b.info.params_non_embedding)
      return a.info.params_non_embedding < b.info.params_non_embedding;
    return a.info.name < b.info.name;
  });
  return runs;
}

void write_run_json(const fs::path& dir, const RunInfo& r) {
  fs::create_directories(dir);
  json j = {{"name", r.name},
                  {"attention", r.attention},
                  {"block_size", r.block_size},
                  {"top_k", r.top_k},
                  {"layers", r.layers},
                  {"heads", r.heads},
                  {"kv_heads", r.kv_heads},
                  {"width", r.width},
                  {"head_dim", r.head_dim},
                  {"seq_len", r.seq_len},
                  {"vocab_size", r.vocab_size},
                  {"params_non_embedding", r.params_non_embedding},
                  {"params_total", r.params_total},
                  {"tokens_planned", r.tokens_planned},
                  {"status", r.status},
                  {"bytes_per_token", r.bytes_per_token}};
  if (!r.validation_data.empty()) j["validation_data"] = r.validation_data;
  // The part of "config" that the learning-rate search reads, when the run has it.
  if (std::isfinite(r.lr)) {
    j["config"]["train"] = {{"lr", r.lr}, {"steps", r.steps}};
    if (r.warmup_steps >= 0) j["config"]["train"]["warmup_steps"] = r.warmup_steps;
  }
  if (r.seed >= 0) j["config"]["train"]["seed"] = r.seed;
  if (r.tied_embeddings >= 0) j["config"]["model"]["tied_embeddings"] = r.tied_embeddings == 1;
  std::ofstream f(dir / "run.json");
  MOBA_CHECK(f.good(), "cannot write '", (dir / "run.json").string(), "'");
  f << j.dump(2) << "\n";
}

namespace {
json number_or_null(double x) { return std::isfinite(x) ? json(x) : json(nullptr); }
}  // namespace

std::string val_line(const ValPoint& p) {
  json buckets = json::array();
  for (double b : p.bucket_losses) buckets.push_back(number_or_null(b));
  json line = {{"kind", "val"},
              {"step", p.step},
              {"tokens", p.tokens},
              {"flops_6nd", p.flops_6nd},
              {"flops_exec", p.flops_exec},
              {"loss", number_or_null(p.loss)},
              {"bucket_size", p.bucket_size},
              {"bucket_losses", buckets},
              {"trailing_loss", number_or_null(p.trailing_loss)},
              {"windows", p.windows}};
  if (!p.window_losses.empty()) {
    json w = json::array(), wb = json::array();
    for (double x : p.window_losses) w.push_back(number_or_null(x));
    for (const auto& row : p.window_bucket_losses) {
      json r = json::array();
      for (double x : row) r.push_back(number_or_null(x));
      wb.push_back(r);
    }
    line["window_losses"] = w;
    line["window_bucket_losses"] = wb;
  }
  if (!p.windows_hash.empty()) line["windows_hash"] = p.windows_hash;
  return line.dump();
}

std::string train_line(const TrainPoint& p) {
  return json{{"kind", "train"},       {"step", p.step},
              {"tokens", p.tokens},     {"loss", number_or_null(p.loss)},
              {"lr", 0.0},              {"grad_norm", 0.0},
              {"tokens_per_s", 0.0},    {"flops_6nd", p.flops_6nd},
              {"flops_exec", p.flops_exec}, {"elapsed_s", p.elapsed_s}}
      .dump();
}

}  // namespace moba::scaling
