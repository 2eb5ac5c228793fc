#include "data/stats.h"

#include <algorithm>
#include <string>

namespace moba::data {

TokenStats TokenStats::of(std::vector<int64_t> t, int64_t bytes) {
  TokenStats s;
  s.documents = static_cast<int64_t>(t.size());
  s.bytes = bytes;
  s.reaching.assign(kReachLengths.size(), 0);
  if (t.empty()) return s;
  std::sort(t.begin(), t.end());
  for (int64_t n : t) s.tokens += n;
  s.min_tokens = t.front();
  s.max_tokens = t.back();
  const size_t m = t.size() / 2;
  s.median_tokens = t.size() % 2 ? static_cast<double>(t[m]) : 0.5 * static_cast<double>(t[m - 1] + t[m]);
  for (size_t i = 0; i < kReachLengths.size(); ++i)
    s.reaching[i] = t.end() - std::lower_bound(t.begin(), t.end(), kReachLengths[i]);
  return s;
}

nlohmann::json TokenStats::to_json() const {
  nlohmann::json reach = nlohmann::json::object();
  for (size_t i = 0; i < kReachLengths.size(); ++i)
    reach[std::to_string(kReachLengths[i])] = reaching[i];
  return {{"documents", documents},
          {"tokens", tokens},
          {"bytes", bytes},
          {"bytes_per_token", tokens ? static_cast<double>(bytes) / static_cast<double>(tokens) : 0.0},
          {"tokens_per_document", {{"min", min_tokens}, {"median", median_tokens}, {"max", max_tokens}}},
          {"documents_reaching", reach}};
}

}  // namespace moba::data
