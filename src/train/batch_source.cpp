// Which source a run reads: the one place a new data source is plugged in.
#include "train/batch_source.h"

#include "core/error.h"
#include "train/config.h"
#include "train/shard_source.h"
#include "train/synthetic.h"

namespace moba::train {

std::unique_ptr<BatchSource> make_batch_source(const RunConfig& cfg, const std::string& data_dir) {
  const std::string data = data_dir.empty() ? cfg.data : data_dir;
  check_data_packing(data, cfg.data_packing);  // --data may name a synthetic source
  if (data == "synthetic:assoc_recall")
    return std::make_unique<AssocRecallSource>(cfg.model.vocab_size, cfg.model.seq_len,
                                               cfg.train.batch_size, cfg.eval.windows,
                                               cfg.train.seed);
  MOBA_CHECK(data.rfind("synthetic:", 0) != 0, "unknown synthetic data source '", data,
             "'; the synthetic sources are: synthetic:assoc_recall");
  return make_shard_source(cfg, data);  // a folder made by `moba prepare`
}

}  // namespace moba::train
