#include "infer/run.h"

#include <filesystem>

#include "core/error.h"
#include "model/params.h"
#include "train/trainer.h"

namespace moba::infer {
namespace fs = std::filesystem;

InferenceRun load_inference_run(const std::string& run_dir, const std::string& attention,
                                const std::string& checkpoint, bool need_tokenizer) {
  MOBA_CHECK(!run_dir.empty(), "a run folder is required (--run)");
  MOBA_CHECK(fs::exists(run_dir), "run folder '", run_dir, "' does not exist");
  MOBA_CHECK(fs::is_directory(run_dir), "'", run_dir, "' is not a folder");
  MOBA_CHECK(fs::is_regular_file(fs::path(run_dir) / "config.toml"), "'", run_dir,
             "' is not a run folder (no config.toml): `moba train -o DIR` makes one");
  MOBA_CHECK(attention == "auto" || attention == "moba" || attention == "full",
             "attention must be auto, moba or full, got '", attention, "'");
  InferenceRun r;
  r.run_dir = run_dir;
  train::RunConfig cfg = train::load_run_config(run_dir);
  cfg.validate();
  r.cfg = cfg.resolved();
  const model::ParamLayout layout = model::make_param_layout(r.cfg.model);
  r.params.assign(layout.total, 0.0f);
  if (checkpoint.empty()) {
    MOBA_CHECK(train::has_checkpoint(run_dir), "'", run_dir,
               "' holds no checkpoint (the run saved none yet)");
    r.state = train::load_checkpoint_weights(run_dir, layout, r.params);
  } else {
    r.state = train::load_checkpoint_folder_weights(checkpoint, layout, r.params);
  }
  const bool has_moba = r.cfg.model.attention.kind == model::AttentionKind::moba;
  MOBA_CHECK(attention != "moba" || has_moba, "attention moba: the run '", run_dir,
             "' has no MoBA layers (attention ", model::attention_label(r.cfg.model), ")");
  r.moba = attention == "auto" ? has_moba && train::last_step_used_moba(r.cfg, r.state)
                               : attention == "moba";
  r.data_dir = r.cfg.data;
  if (r.data_dir.rfind("synthetic:", 0) != 0) {
    r.tokenizer = data::Tokenizer::open(r.data_dir);
    MOBA_CHECK(r.tokenizer->vocab_size() <= r.cfg.model.vocab_size, "the tokenizer of '",
               r.data_dir, "' has ", r.tokenizer->vocab_size(),
               " ids, more than the model's vocab_size ", r.cfg.model.vocab_size);
  } else {
    MOBA_CHECK(!need_tokenizer, "the run '", run_dir, "' was trained on ", r.data_dir,
               ": it has no tokenizer to turn text into tokens");
  }
  return r;
}

}  // namespace moba::infer
