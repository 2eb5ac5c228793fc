#include "train/metrics.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace moba::train {

MetricsLog::MetricsLog(const std::string& path)
    : path_(path), f_(std::fopen(path.c_str(), "a")) {
  MOBA_CHECK(f_, "cannot open '", path, "' for appending: ", std::strerror(errno));
}

void MetricsLog::write(const nlohmann::json& line) {
  const std::string s = line.dump() + "\n";
  MOBA_CHECK(std::fwrite(s.data(), 1, s.size(), f_.get()) == s.size() &&
                 std::fflush(f_.get()) == 0,
             "writing '", path_, "' failed: ", std::strerror(errno));
}

void truncate_metrics(const std::string& path, int64_t last_step) {
  std::ifstream in(path);
  if (!in.good()) return;
  std::ostringstream kept;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object() || !j.contains("step")) continue;
    if (j["step"].get<int64_t>() <= last_step) kept << line << "\n";
  }
  in.close();
  write_file_atomic(path, kept.str());
}

nlohmann::json val_record(const EvalResult& r, const TrainState& state, bool moba) {
  nlohmann::json v = {{"kind", "val"},
                      {"step", state.step},
                      {"tokens", state.tokens},
                      {"flops_6nd", state.flops_6nd},
                      {"flops_exec", state.flops_exec},
                      {"attention", moba ? "moba" : "full"},
                      {"loss", r.loss},
                      {"bucket_size", r.bucket_size},
                      {"bucket_losses", r.bucket_losses},
                      {"trailing_loss", nullptr},
                      {"windows", r.windows},
                      {"window_losses", r.window_losses},
                      {"window_bucket_losses", r.window_bucket_losses},
                      {"windows_hash", r.windows_hash}};
  if (r.trailing_loss) v["trailing_loss"] = *r.trailing_loss;
  return v;
}

}  // namespace moba::train
