// Synthetic tasks for tests and quick runs: no files, deterministic from the seed.
//
// assoc_recall: associative recall across blocks. With n = the largest integer such that
// 2n + n^2 < V, the vocabulary holds n keys [0, n), n values [n, 2n), n^2 pair tokens
// [2n, 2n + n^2) (pair (k, v) is token 2n + k*n + v) and filler tokens (the rest). A
// window of T+1 tokens is
//   context (positions [0, (T+1)/2)): fillers, with each key's pair token (k, v_k) at a
//                                      random position (v_k random per window)
//   queries (the rest):               k_a v_a k_b v_b ... (keys drawn at random)
// Predicting a query's value v_a needs the pair token of k_a written earlier, up to T
// positions back, in another MoBA block: its loss is 0 for a model that retrieves it and
// log(n) for one that does not. One attention layer can learn it (the pair token carries
// both halves; the usual two-token "k v" pairs need an induction circuit, which tiny
// models take thousands of steps to form), so the CPU tests can show recall, with full
// attention and with MoBA (whose gate must then find the block of the pair), in seconds.
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
  int64_t keys() const { return n_; }

 private:
  int64_t V_, T_, B_, windows_, n_;
  uint64_t seed_;
};

}  // namespace moba::train
