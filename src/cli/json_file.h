// The JSON files of the commands: what they write with -o/--out (moba fit, the benchmarks)
// and the peers' results the benchmarks compare against (--peer).
#pragma once

#include <fstream>
#include <initializer_list>
#include <string>
#include <utility>

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

// A peer JSON's shape against the benchmark's: every key of `shape` that the peer records
// (peer_sdpa.py writes batch, heads and head_dim) must be equal, else the ratios would
// compare other shapes. moba::Error naming the key, both values and the file.
inline void check_peer_shape(const nlohmann::json& peer, const std::string& path,
                             std::initializer_list<std::pair<const char*, long long>> shape) {
  if (peer.is_null()) return;
  for (const auto& [key, ours] : shape) {
    if (!peer.contains(key)) continue;
    MOBA_CHECK(peer[key].is_number_integer(), "peer JSON '", path, "': ", key,
               " is not an integer");
    const long long theirs = peer[key].get<long long>();
    MOBA_CHECK(theirs == ours, "peer JSON '", path, "' was timed at ", key, " = ", theirs,
               ", this benchmark runs ", key, " = ", ours, ": time the peer at the same shape");
  }
}

}  // namespace moba::cli
