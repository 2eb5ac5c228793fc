#include "train/eval_run.h"

#include <filesystem>
#include <vector>

#include "core/error.h"
#include "data/dataset.h"
#include "model/model.h"
#include "model/params.h"
#include "train/batch_source.h"
#include "train/config.h"
#include "train/trainer.h"
#ifdef MOBA_WITH_CUDA
#include "model/cuda/model_cuda.h"
#endif

namespace moba::train {
namespace fs = std::filesystem;

EvalRunResult evaluate_run(const EvalRunOptions& opt) {
  const fs::path run(opt.run_dir);
  MOBA_CHECK(!opt.run_dir.empty(), "a run folder is required");
  MOBA_CHECK(fs::is_directory(run), "'", opt.run_dir, "' is not a folder");
  MOBA_CHECK(fs::is_regular_file(run / "config.toml"), "'", opt.run_dir,
             "' is not a run folder (no config.toml)");
  MOBA_CHECK(has_checkpoint(opt.run_dir), "'", opt.run_dir, "' holds no checkpoint to evaluate");
  MOBA_CHECK(opt.attention == "auto" || opt.attention == "moba" || opt.attention == "full",
             "--attention must be auto, moba or full, got '", opt.attention, "'");
  MOBA_CHECK(opt.device == "cpu" || opt.device == "cuda", "--device must be cpu or cuda, got '",
             opt.device, "'");
  RunConfig cfg = load_run_config(opt.run_dir);
  cfg.validate();
  cfg = cfg.resolved();

  EvalRunResult r;
  model::Model<float> model(cfg.model);
  std::vector<float> params(model.layout().total);
  r.state = load_checkpoint_weights(opt.run_dir, model.layout(), params);
  const bool has_moba = cfg.model.attention.kind == model::AttentionKind::moba;
  MOBA_CHECK(opt.attention != "moba" || has_moba, "--attention moba: the run '", opt.run_dir,
             "' has no MoBA layers (attention ", model::attention_label(cfg.model), ")");
  r.moba = opt.attention == "auto" ? has_moba && last_step_used_moba(cfg, r.state)
                                   : opt.attention == "moba";

  // The windows: the trainer's validation (eval.windows windows of model.seq_len + 1 tokens)
  // unless --windows, --seq-len or --split say otherwise.
  MOBA_CHECK(opt.split == "val" || opt.split == "train", "--split must be val or train, got '",
             opt.split, "'");
  MOBA_CHECK(opt.windows >= 0, "--windows must be >= 1 (0 = the run's eval.windows), got ",
             opt.windows);
  MOBA_CHECK(opt.seq_len >= 0, "--seq-len must be >= 1 (0 = model.seq_len), got ", opt.seq_len);
  MOBA_CHECK(opt.bucket_size >= 0, "--bucket-size must be >= 1 (0 = the run's eval.bucket_size), got ",
             opt.bucket_size);
  MOBA_CHECK(opt.seq_len <= cfg.model.seq_len, "--seq-len ", opt.seq_len,
             " exceeds the model's context (model.seq_len = ", cfg.model.seq_len, ")");
  RunConfig wcfg = cfg;
  if (opt.seq_len > 0) wcfg.model.seq_len = opt.seq_len;
  if (opt.windows > 0) wcfg.eval.windows = opt.windows;
  const int64_t bucket_size = opt.bucket_size > 0 ? opt.bucket_size : cfg.eval.bucket_size;
  r.split = opt.split;
  r.seq_len = wcfg.model.seq_len;

  // --data, else the run's own validation data (eval.data, or its training data's val split).
  const std::string data_dir =
      !opt.data_dir.empty() ? opt.data_dir : !cfg.eval.data.empty() ? cfg.eval.data : cfg.data;
  std::vector<Window> windows;
  if (data_dir.rfind("synthetic:", 0) == 0) {
    MOBA_CHECK(opt.split == "val", "--split train: the synthetic source ", data_dir,
               " has validation windows only");
    std::unique_ptr<BatchSource> data = make_batch_source(wcfg, data_dir);
    windows = data->validation();
    r.bytes_per_token = data->bytes_per_token();
    r.data = data->describe();
  } else {
    MOBA_CHECK(fs::is_directory(data_dir), "data '", data_dir,
               "' is neither a synthetic source nor a folder (make one with `moba prepare`, see "
               "docs/data.md)");
    // Another folder than the one the run trained on must be tokenized alike.
    if (!opt.data_dir.empty() && cfg.data.rfind("synthetic:", 0) != 0) {
      if (fs::is_directory(cfg.data))
        check_same_tokenizer(cfg.data, data_dir, "--data");
      else
        r.notes.push_back("the run's data '" + cfg.data + "' is not here: the tokenizer of '" +
                          data_dir + "' could not be compared with it");
    }
    // The trainer's windows (ShardSource::validation): Dataset::validation_windows.
    const data::Dataset ds = data::Dataset::open(data_dir, {true, cfg.model.vocab_size});
    const data::Batch v = ds.validation_windows(
        wcfg.model.seq_len, wcfg.eval.windows,
        opt.split == "train" ? data::Split::train : data::Split::val);
    const int64_t T = wcfg.model.seq_len;
    for (int64_t i = 0; i < v.B; ++i)
      windows.push_back({std::vector<int32_t>(v.row(i), v.row(i) + T + 1), v.single_document[i] != 0});
    r.bytes_per_token = ds.bytes_per_token();
    r.data = "shards " + ds.dir() + " (" + ds.tokenizer_kind() + ", vocabulary " +
             std::to_string(ds.vocab_size()) + "; " + std::to_string(wcfg.eval.windows) + " " +
             opt.split + " windows of " + std::to_string(T) + " + 1 tokens)";
  }
  if (opt.device == "cuda") {
#ifdef MOBA_WITH_CUDA
    model::cuda::ModelCuda gpu(cfg.model);
    gpu.upload_params(params);
    r.eval = evaluate(
        [&](const model::Batch& b) {
          gpu.forward(b, r.moba);
          gpu.take_losses();
          return gpu.token_losses();
        },
        windows, cfg.eval.batch_size, bucket_size);
#else
    MOBA_CHECK(false, "--device cuda: this build of moba has no CUDA kernels");
#endif
  } else {
    r.eval = evaluate(model, params, windows, cfg.eval.batch_size, bucket_size, r.moba);
  }
  return r;
}

}  // namespace moba::train
