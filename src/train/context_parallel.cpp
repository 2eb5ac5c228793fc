#include "train/context_parallel.h"

#include <algorithm>
#include <string>

#include "core/error.h"

namespace moba::train {

void check_context_parallel(const RunConfig& cfg, int ranks, const std::string& device,
                            bool data_parallel) {
  MOBA_CHECK(ranks >= 1, "--context-parallel ", ranks,
             ": context parallel needs R >= 1 ranks");
  MOBA_CHECK(!data_parallel, "data parallel and context parallel at once are not supported "
             "yet (docs/distributed.md): train with --gpus N or with --context-parallel R, "
             "not both");
  const model::ModelConfig& m = cfg.model;
  if (device == "cuda" && ranks > 1) {
    // The GPU model's context parallel runs MoBA layers only (ring attention, for full
    // layers, is not on the GPU yet): every layer must run MoBA in every step.
    std::string why;
    if (m.attention.kind != model::AttentionKind::moba) why = "attention.kind is \"full\"";
    else if (m.attention.full_attention_last_layers > 0)
      why = "attention.full_attention_last_layers = " +
            std::to_string(m.attention.full_attention_last_layers);
    else if (m.attention.moba_to_full_at < 1.0)
      why = "attention.moba_to_full_at = " + std::to_string(m.attention.moba_to_full_at) +
            " switches to full attention";
    MOBA_CHECK(why.empty(), "--context-parallel ", ranks, " --device cuda: every layer must "
               "run MoBA in every step, but ", why, ": full-attention layers need ring "
               "attention, which runs on the CPU only so far (docs/distributed.md)");
  }
  const int64_t T = m.seq_len, R = ranks;
  MOBA_CHECK(T % R == 0, "--context-parallel ", R, ": model.seq_len = ", T,
             " is not a multiple of ", R, " ranks (rank r holds positions [r T / R, (r + 1) "
             "T / R) of every sequence)");
  bool any_moba = false;  // a layer runs MoBA in some step (the MoBA-to-full switch aside)
  for (int64_t l = 0; l < m.layers; ++l) any_moba = any_moba || model::layer_uses_moba(m, l, true);
  any_moba = any_moba && m.attention.moba_to_full_at > 0.0;
  const int64_t S = m.attention.block_size;
  MOBA_CHECK(!any_moba || T % (R * S) == 0, "--context-parallel ", R, ": model.seq_len = ", T,
             " is not a multiple of R x attention.block_size = ", R, " x ", S, " = ", R * S,
             ": every rank must hold whole MoBA blocks (a shard of T / R = ", T / R,
             " tokens); choose R, model.seq_len or attention.block_size so that it is");
  MOBA_CHECK(cfg.data_packing != "packed", "--context-parallel ", R,
             ": data_packing = \"packed\" puts several documents in a row, and context "
             "parallel trains on one document per row (a shard of a sequence holds no document "
             "boundary; docs/distributed.md); use data_packing = \"document\"");
}

RunConfig context_parallel_rank_config(const RunConfig& cfg, int ranks, const std::string& device) {
  if (ranks <= 1 || device != "cuda") return cfg;
  RunConfig r = cfg;
  r.model.seq_len = cfg.model.seq_len / ranks;
  r.train.batch_size = 1;
  return r;
}

void check_context_parallel_batch(const model::Batch& global, int64_t step, uint64_t index) {
  const int64_t T = global.T;
  if (!global.cu_seqlens.empty()) {
    // Boundaries strictly inside a row start another document in it.
    std::vector<int64_t> inside(static_cast<size_t>(global.B), 0);
    for (int64_t x : global.cu_seqlens)
      if (x % T != 0) ++inside[static_cast<size_t>(x / T)];
    for (int64_t b = 0; b < global.B; ++b)
      MOBA_CHECK(inside[static_cast<size_t>(b)] == 0, "step ", step, ": row ", b,
                 " of micro-batch ", index, " holds ", inside[static_cast<size_t>(b)] + 1,
                 " documents (cu_seqlens); context parallel trains on one document per row "
                 "(packed documents are not supported; docs/distributed.md)");
  }
  MOBA_CHECK(global.counted_positions() > 0, "step ", step, ": the loss mask of micro-batch ",
             index, " counts no position: no loss to average");
}

model::Batch row_shard(const model::Batch& global, int64_t row, int rank, int ranks) {
  MOBA_CHECK(ranks >= 1 && rank >= 0 && rank < ranks, "context parallel: rank ", rank,
             " outside a group of ", ranks);
  MOBA_CHECK(row >= 0 && row < global.B, "context parallel: row ", row, " of a batch of ",
             global.B);
  MOBA_CHECK(global.T % ranks == 0, "context parallel: rows of T = ", global.T,
             " tokens cannot be split evenly over ", ranks, " ranks");
  const int64_t T = global.T, T_r = T / ranks, first = rank * T_r;
  model::Batch b;
  b.B = 1;
  b.T = T_r;
  const auto from = global.tokens.begin() + row * (T + 1) + first;
  b.tokens.assign(from, from + T_r + 1);
  if (!global.loss_mask.empty()) {
    const auto mask = global.loss_mask.begin() + row * T + first;
    b.loss_mask.assign(mask, mask + T_r);
  }
  return b;
}

double row_weight(const model::Batch& global, int64_t row) {
  const int64_t total = global.counted_positions();
  MOBA_CHECK(total > 0, "context parallel: the batch's loss mask counts no position");
  int64_t mine = global.T;
  if (!global.loss_mask.empty()) {
    const auto mask = global.loss_mask.begin() + row * global.T;
    mine = std::count(mask, mask + global.T, uint8_t{1});
  }
  return static_cast<double>(mine) / static_cast<double>(total);
}

std::vector<float> context_parallel_token_losses(model::Model<float>& model,
                                                 std::span<const float> params,
                                                 const model::Batch& batch, bool moba_phase,
                                                 dist::Communicator& comm) {
  MOBA_CHECK(model.context_parallel() == &comm, "context parallel: the model does not run "
             "over this group (Model::set_context_parallel)");
  const int R = comm.size();
  const int64_t T_r = batch.T / R;
  std::vector<float> out(static_cast<size_t>(batch.B * batch.T));
  for (int64_t row = 0; row < batch.B; ++row) {
    model.forward(params, row_shard(batch, row, comm.rank(), R), moba_phase);
    const std::span<const float> mine = model.token_losses();
    MOBA_CHECK(static_cast<int64_t>(mine.size()) == T_r, "internal: ", mine.size(),
               " token losses for a shard of ", T_r);
    comm.all_gather(mine, std::span<float>(out).subspan(static_cast<size_t>(row * batch.T),
                                                         static_cast<size_t>(batch.T)));
  }
  return out;
}

}  // namespace moba::train
