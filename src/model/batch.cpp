#include "model/batch.h"

#include <algorithm>

#include "core/error.h"

namespace moba::model {

void Batch::validate(int64_t V) const {
  MOBA_CHECK(B >= 1 && T >= 1, "batch must have B >= 1 and T >= 1, got B = ", B, ", T = ", T);
  MOBA_CHECK(tokens.size() == static_cast<size_t>(B * (T + 1)), "batch holds ", tokens.size(),
             " tokens, (B, T+1) = (", B, ", ", T + 1, ") needs ", B * (T + 1));
  for (size_t i = 0; i < tokens.size(); ++i)
    MOBA_CHECK(tokens[i] >= 0 && tokens[i] < V, "token ", tokens[i], " at index ", i,
               " of the batch is outside the vocabulary [0, ", V, ")");
  MOBA_CHECK(loss_mask.empty() || loss_mask.size() == static_cast<size_t>(B * T),
             "batch loss_mask holds ", loss_mask.size(), " entries, (B, T) = (", B, ", ", T,
             ") needs ", B * T, " (or none: every position counts)");
  for (size_t i = 0; i < loss_mask.size(); ++i)
    MOBA_CHECK(loss_mask[i] <= 1, "batch loss_mask must hold 0 or 1, got ",
               static_cast<int>(loss_mask[i]), " at index ", i);
  if (cu_seqlens.empty()) return;
  MOBA_CHECK(cu_seqlens.front() == 0 && cu_seqlens.back() == B * T,
             "batch cu_seqlens must run from 0 to B*T = ", B * T);
  for (size_t i = 1; i < cu_seqlens.size(); ++i)
    MOBA_CHECK(cu_seqlens[i] > cu_seqlens[i - 1], "batch cu_seqlens must be strictly increasing");
  for (int64_t b = 0; b < B; ++b)
    MOBA_CHECK(std::binary_search(cu_seqlens.begin(), cu_seqlens.end(), b * T),
               "batch cu_seqlens must hold every row start b*T; ", b * T, " is missing");
}

std::vector<int64_t> Batch::boundaries() const {
  if (!cu_seqlens.empty()) return cu_seqlens;
  std::vector<int64_t> cu(static_cast<size_t>(B) + 1);
  for (int64_t b = 0; b <= B; ++b) cu[b] = b * T;
  return cu;
}

int64_t Batch::counted_positions() const {
  if (loss_mask.empty()) return B * T;
  return static_cast<int64_t>(std::count(loss_mask.begin(), loss_mask.end(), uint8_t{1}));
}

}  // namespace moba::model
