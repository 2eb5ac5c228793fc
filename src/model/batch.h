// What the model trains on: B rows of T+1 tokens (inputs are the first T, targets the
// last T), optionally several documents packed per row.
#pragma once

#include <cstdint>
#include <vector>

namespace moba::model {

struct Batch {
  int64_t B = 0, T = 0;
  std::vector<int32_t> tokens;  // (B, T+1)
  // Document boundaries on the flattened (B*T) input positions: {0, ..., B*T}, strictly
  // increasing, holding every row start b*T (a document never spans two rows). Empty
  // means one document per row. Attention never crosses a boundary, RoPE positions and
  // MoBA blocks restart at each one.
  std::vector<int64_t> cu_seqlens;

  // Throws moba::Error naming the problem (sizes, token ids outside [0, V), boundaries).
  void validate(int64_t vocab_size) const;
  // cu_seqlens, or {0, T, 2T, ..., B*T} when empty.
  std::vector<int64_t> boundaries() const;
};

}  // namespace moba::model
