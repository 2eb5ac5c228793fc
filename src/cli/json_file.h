// The JSON files of the commands: what they write with -o/--out (moba fit, the benchmarks)
// and the peers' results the benchmarks compare against (--peer).
#pragma once

#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace moba::cli {

// j, indented by 2, and a newline; moba::Error when `path` cannot be opened for writing.
inline void write_json_file(const std::string& path, const nlohmann::json& j) {
  std::ofstream f(path);
  MOBA_CHECK(f.good(), "cannot write JSON to '", path, "'");
  f << j.dump(2) << "\n";
}

// A peer script's JSON (bench/peer_sdpa.py, bench/decode_peers.py); null when `path` is empty.
inline nlohmann::json read_peer_json(const std::string& path) {
  if (path.empty()) return nullptr;
  std::ifstream f(path);
  MOBA_CHECK(f.good(), "cannot read peer JSON '", path, "'");
  return nlohmann::json::parse(f);
}

}  // namespace moba::cli
