#include "train/eval_run.h"

#include <filesystem>
#include <vector>

#include "core/error.h"
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

  // --data, else the run's own validation data (eval.data, or its training data's val split).
  std::unique_ptr<BatchSource> data =
      make_batch_source(cfg, opt.data_dir.empty() ? cfg.eval.data : opt.data_dir);
  const std::vector<Window> windows = data->validation();
  r.bytes_per_token = data->bytes_per_token();
  r.data = data->describe();
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
        windows, cfg.eval.batch_size, cfg.eval.bucket_size);
#else
    MOBA_CHECK(false, "--device cuda: this build of moba has no CUDA kernels");
#endif
  } else {
    r.eval = evaluate(model, params, windows, cfg.eval.batch_size, cfg.eval.bucket_size, r.moba);
  }
  return r;
}

}  // namespace moba::train
