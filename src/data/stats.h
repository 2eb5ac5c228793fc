// Statistics of documents' token counts, as the manifest reports them.
#pragma once

#include <cstdint>
#include <vector>

#include <nlohmann/json.hpp>

namespace moba::data {

// The lengths (in tokens) that the manifest counts documents against: a document
// "reaches" L when it holds at least L tokens, i.e. one full window of L tokens fits.
inline const std::vector<int64_t> kReachLengths = {4096, 8192, 32768};

struct TokenStats {
  int64_t documents = 0;
  int64_t tokens = 0;
  int64_t bytes = 0;          // UTF-8 bytes of the cleaned text
  int64_t min_tokens = 0;     // per document; 0 when there is no document
  double median_tokens = 0;   // the mean of the two middle values for an even count
  int64_t max_tokens = 0;
  std::vector<int64_t> reaching;  // documents with >= kReachLengths[i] tokens

  // From per-document token counts and total bytes.
  static TokenStats of(std::vector<int64_t> doc_tokens, int64_t bytes);
  nlohmann::json to_json() const;
};

}  // namespace moba::data
