// What the model trains on: B rows of T+1 tokens (inputs are the first T, targets the
// last T), optionally several documents packed per row, with a loss mask.
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
  // (B, T), 0 or 1: which targets count in the loss. 0 where input t and target t+1 lie in
  // different documents (a packed row's target that starts the next document). Empty means
  // every position counts. The loss is the mean over the positions with 1; a mask with no
  // 1 is an error (Model::forward), not a zero loss.
  std::vector<uint8_t> loss_mask;

  // Throws moba::Error naming the problem (sizes, token ids outside [0, V), boundaries,
  // a loss_mask of the wrong size or with values other than 0 and 1).
  void validate(int64_t vocab_size) const;
  // cu_seqlens, or {0, T, 2T, ..., B*T} when empty.
  std::vector<int64_t> boundaries() const;
  // Positions whose target counts: B*T without a mask, else the mask's ones.
  int64_t counted_positions() const;
};

}  // namespace moba::model
