// What a run writes for tools (docs/run_format.md): run.json, and metrics.jsonl with one
// JSON object per line, flushed per line so that a crash loses at most the line in flight.
#pragma once

#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "core/safe_io.h"
#include "train/checkpoint.h"
#include "train/evaluate.h"

namespace moba::train {

class MetricsLog {
 public:
  // Opens `path` for appending (creating it); the file is closed with the log.
  explicit MetricsLog(const std::string& path);

  void write(const nlohmann::json& line);  // one line, flushed

 private:
  struct Close {
    void operator()(std::FILE* f) const { std::fclose(f); }
  };
  std::string path_;
  std::unique_ptr<std::FILE, Close> f_;
};

// A "val" line of metrics.jsonl (docs/run_format.md): the trainer writes it, `moba eval` prints
// it, so the two can be compared key by key. `moba` says which attention the MoBA layers used.
nlohmann::json val_record(const EvalResult& r, const TrainState& state, bool moba);

// On resume: keeps the lines whose "step" is <= last_step (every step then appears once),
// rewriting the file atomically. A torn last line (a crash mid-write) is dropped too.
void truncate_metrics(const std::string& path, int64_t last_step);

// Writes `text` to `path` through an exclusively created temporary and a rename
// (core/safe_io.h).
using moba::write_file_atomic;

}  // namespace moba::train
