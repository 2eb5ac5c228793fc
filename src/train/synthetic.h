// Synthetic tasks for tests and quick runs: no files, deterministic from the seed.
//
// assoc_recall, a long-range task (associative recall across blocks). Keys are the
// tokens [0, V/2), values [V/2, V). A window of T+1 tokens is
//   k_1 v_1 k_2 v_2 ... k_n v_n   (n distinct keys, random values: the "pairs")
//   k_a v_a k_b v_b ...           (queries: keys drawn again from the pairs, up to T+1)
// with n = min(V/2, (T+1)/4). Predicting a query's value needs the pair written earlier,
// up to T positions back, so in another MoBA block; everything else is noise. The best
// possible loss on query values is 0; a model without recall cannot beat log(V/2) there.
#pragma once

#include <cstdint>
#include <vector>

#include "train/batch_source.h"

namespace moba::train {

class AssocRecallSource : public BatchSource {
 public:
  AssocRecallSource(int64_t vocab_size, int64_t seq_len, int64_t batch_size, int64_t windows,
                    uint64_t seed);

  model::Batch train_batch(uint64_t index) override;
  std::vector<Window> validation() override;
  std::string describe() const override;

  // The T+1 tokens of window `stream` (any 64-bit id).
  std::vector<int32_t> window(uint64_t stream) const;
  // (T) 1 where the target of input position t (token t+1) is a query's value.
  std::vector<uint8_t> recall_mask() const;
  int64_t pairs() const { return pairs_; }

 private:
  int64_t V_, T_, B_, windows_, pairs_;
  uint64_t seed_;
};

}  // namespace moba::train
