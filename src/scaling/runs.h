// Reading training runs: the folders `moba train` writes (docs/run_format.md), as the
// scaling study sees them. Nothing here knows about fits or plots.
#pragma once

#include <cstdint>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

namespace moba::scaling {

inline constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// run.json: what the run is. Sizes count parameters without embeddings where the name
// says so, as the paper does.
struct RunInfo {
  std::string name;
  std::string attention;  // "full", "moba" or "hybrid"
  int64_t block_size = 0, top_k = 0;
  int64_t layers = 0, heads = 0, kv_heads = 0, width = 0, head_dim = 0;
  int64_t seq_len = 0, vocab_size = 0;
  int64_t params_non_embedding = 0, params_total = 0;
  double tokens_planned = 0;
  std::string status;  // "running", "finished" or "failed"
  double bytes_per_token = 1.0;
  std::string validation_data;  // what the val lines were computed on ("" in older runs)
  // From run.json's "config", what a learning-rate search varies (lr_search.h); absent
  // from hand-made runs: NaN, 0 and -1.
  double lr = kNaN;               // peak learning rate (train.lr)
  int64_t steps = 0;              // train.steps
  int64_t warmup_steps = -1;      // train.warmup_steps
  int tied_embeddings = -1;       // model.tied_embeddings: 1, 0, or -1 when unknown
  // train.seed (initialisation and the order of training batches; seeds.h), -1 when unknown.
  int64_t seed = -1;
};

// One "val" line of metrics.jsonl. Absent or null losses are NaN.
struct ValPoint {
  int64_t step = 0;
  double tokens = 0, flops_6nd = 0, flops_exec = 0;
  double loss = kNaN;                 // nats/token, mean over all positions
  int64_t bucket_size = 0;            // positions per bucket
  std::vector<double> bucket_losses;  // bucket i: positions [i*bucket_size, (i+1)*bucket_size)
  double trailing_loss = kNaN;        // last bucket on full-length windows; NaN if null
  int64_t windows = 0;
  // Per validation window (runs written since 2026-12): (windows) mean losses and
  // (windows, buckets) bucket means, in the same window order for every run on the same
  // data; windows_hash identifies that set of windows. Empty when the run predates them.
  std::vector<double> window_losses;
  std::vector<std::vector<double>> window_bucket_losses;
  std::string windows_hash;
};

// One "train" line (only what the study uses).
struct TrainPoint {
  int64_t step = 0;
  double tokens = 0, loss = kNaN, flops_6nd = 0, flops_exec = 0, elapsed_s = 0;
};

struct Run {
  std::filesystem::path dir;
  RunInfo info;
  std::vector<ValPoint> val;      // ascending step
  std::vector<TrainPoint> train;  // ascending step
  std::vector<std::string> warnings;  // recoverable oddities, e.g. a half-written last line

  bool running() const { return info.status == "running"; }
  bool failed() const { return info.status == "failed"; }
  // The last validation point, or nullptr when the run has none.
  const ValPoint* last_val() const { return val.empty() ? nullptr : &val.back(); }
};

// Reads one run folder (run.json, and metrics.jsonl when present). Malformed JSON or a
// field of the wrong type throws moba::Error naming the file and line. The last line of a
// running run's metrics.jsonl may be cut mid-write: without a final newline it is skipped
// with a warning instead.
Run read_run(const std::filesystem::path& dir);

// Every run under runs_dir: the folder itself when it holds run.json, else its
// descendants (three levels deep, `checkpoint/` folders skipped) that do. Sorted by
// attention, non-embedding parameters, then name. Throws when none is found.
std::vector<Run> read_runs(const std::filesystem::path& runs_dir);

// Writers used by the synthetic generator and tests: the same format `moba train` writes.
// run.json is written whole; the lines come without their newline.
void write_run_json(const std::filesystem::path& dir, const RunInfo& info);
std::string val_line(const ValPoint& p);
std::string train_line(const TrainPoint& p);

}  // namespace moba::scaling
