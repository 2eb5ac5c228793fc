#include "train/shard_source.h"

#include <filesystem>

#include "core/error.h"
#include "train/config.h"
#include "train/progress.h"

namespace moba::train {
namespace {

data::Dataset open_dataset(const std::string& dir, int64_t vocab_size) {
  MOBA_CHECK(std::filesystem::is_directory(dir), "data '", dir,
             "' is neither a synthetic "
             "source nor a folder (make one with `moba prepare`, see docs/data.md)");
  return data::Dataset::open(dir, {true, vocab_size});
}

}  // namespace

ShardSource::ShardSource(const std::string& dir, int64_t vocab_size, int64_t T, int64_t B,
                         int64_t windows, uint64_t seed, data::Packing packing)
    : ds_(open_dataset(dir, vocab_size)),
      T_(T),
      B_(B),
      windows_(windows),
      seed_(seed),
      packing_(packing) {
  if (packing == data::Packing::document) {
    const int64_t longest = ds_.longest_document(data::Split::train);
    MOBA_CHECK(longest >= T + 1, dir, ": no training document holds T + 1 = ", T + 1,
               " tokens (the longest has ", longest,
               "); use a shorter model.seq_len, or data_packing = \"packed\"");
  } else {
    const int64_t tokens = ds_.tokens(data::Split::train);
    MOBA_CHECK(tokens >= T + 1, dir, ": the training split holds ", tokens,
               " tokens, fewer than T + 1 = ", T + 1, "; use a shorter model.seq_len");
  }
}

model::Batch ShardSource::train_batch(uint64_t index) {
  data::Batch d = ds_.train_batch(seed_, static_cast<int64_t>(index), B_, T_, packing_);
  model::Batch b;
  b.B = d.B;
  b.T = d.T;
  b.tokens = std::move(d.tokens);
  if (packing_ == data::Packing::packed) {  // documents cut at their ends, targets masked
    b.cu_seqlens = std::move(d.cu_seqlens);
    b.loss_mask = std::move(d.loss_mask);
  }  // document rows: one document per row, no cu_seqlens, no mask
  return b;
}

std::vector<Window> ShardSource::validation() {
  const data::Batch v = ds_.validation_windows(T_, windows_);
  std::vector<Window> out;
  out.reserve(static_cast<size_t>(v.B));
  for (int64_t r = 0; r < v.B; ++r)
    out.push_back({std::vector<int32_t>(v.row(r), v.row(r) + T_ + 1), v.single_document[r] != 0});
  return out;
}

std::string ShardSource::describe() const {
  using data::Split;
  return "shards " + ds_.dir() + " (" + ds_.tokenizer_kind() + ", vocabulary " +
         std::to_string(ds_.vocab_size()) + "; " +
         format_count(static_cast<double>(ds_.tokens(Split::train))) + " training tokens in " +
         std::to_string(ds_.documents(Split::train)) + " documents, " +
         std::to_string(ds_.documents_reaching(Split::train, T_ + 1)) +
         " reach T + 1; " +
         (packing_ == data::Packing::packed ? "packed rows, cross-document targets masked"
                                            : "document windows") +
         ", validation " + std::to_string(windows_) +
         " windows from " + std::to_string(ds_.documents(Split::val)) + " documents)";
}

std::unique_ptr<BatchSource> make_shard_source(const RunConfig& cfg, const std::string& dir) {
  return std::make_unique<ShardSource>(dir, cfg.model.vocab_size, cfg.model.seq_len,
                                       cfg.train.batch_size, cfg.eval.windows, cfg.train.seed,
                                       data::packing_from_string(cfg.data_packing));
}

}  // namespace moba::train
