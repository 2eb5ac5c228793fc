// moba export-hf RUN_DIR -o OUT_DIR (or RUN_DIR OUT_DIR): a run's checkpoint as a Hugging Face Llama folder;
// moba import-hf HF_DIR --out RUN_DIR: the other way, a run folder `moba train --resume`
// continues (MoBA continual pre-training from a full-attention model). docs/hf.md.
#include <cstdio>

#include "cli/commands.h"
#include "core/error.h"
#include "train/hf.h"

namespace moba::cli {

void add_export_hf(CLI::App& app) {
  static train::HfExportOptions o;
  static bool no_tokenizer = false;
  CLI::App* cmd = app.add_subcommand(
      "export-hf", "Write a run's checkpoint as a Hugging Face LlamaForCausalLM folder");
  cmd->add_option("run_dir", o.run_dir, "Run folder (config.toml + checkpoint/)")->required();
  cmd->add_option("--out,-o", o.out_dir,
                  "Output folder: config.json, model.safetensors, tokenizer files (or the "
                  "second argument)");
  cmd->add_option("out_dir", o.out_dir, "Output folder (as -o/--out)");
  cmd->add_option("--data", o.data_dir,
                  "Prepared data folder whose tokenizer to convert (default: the run's data)");
  cmd->add_flag("--no-tokenizer", no_tokenizer, "Write no tokenizer files");
  cmd->add_flag("--force", o.force, "Write into an output folder that is not empty");
  cmd->callback([] {
    MOBA_CHECK(!o.out_dir.empty(), "export-hf: no output folder (-o/--out OUT_DIR)");
    o.tokenizer = !no_tokenizer;
    const train::HfExportResult r = train::export_hf(o, stdout);
    std::printf("export-hf: wrote %s (step %lld, %zu tensors, tokenizer: %s)\n", o.out_dir.c_str(),
                static_cast<long long>(r.step), r.tensors, r.tokenizer.c_str());
  });
}

void add_import_hf(CLI::App& app) {
  static train::HfImportOptions o;
  CLI::App* cmd = app.add_subcommand(
      "import-hf",
      "Make a run folder from a Hugging Face Llama checkpoint; continue it with "
      "`moba train --out RUN_DIR --resume`");
  cmd->add_option("hf_dir", o.hf_dir, "Hugging Face folder (config.json + safetensors)")
      ->required();
  cmd->add_option("--out,-o", o.out_dir, "The new run folder")->required();
  cmd->add_option("--config,-c", o.config_path,
                  "Base run configuration (TOML); its [model] is replaced by the checkpoint's "
                  "architecture (model.seq_len kept)");
  cmd->add_option("--name", o.name, "Run name (default: the HF folder's name)");
  cmd->add_option("--data", o.data, "Training data: token shards folder or synthetic:...");
  cmd->add_option("--data-packing", o.data_packing, "document or packed");
  cmd->add_option("--attention", o.attention, "moba or full (default: the base config's, moba)")
      ->check(CLI::IsMember({"moba", "full"}));
  cmd->add_option("--block-size,-S", o.block_size, "MoBA block size S");
  cmd->add_option("--top-k,-K", o.top_k, "MoBA top-k K (the current block included)");
  cmd->add_option("--full-attention-last-layers", o.full_attention_last_layers,
                  "Layer-wise hybrid: the last N layers full");
  cmd->add_option("--moba-to-full-at", o.moba_to_full_at,
                  "Switch every layer to full attention after this fraction of the tokens");
  cmd->add_option("--seq-len,-T", o.seq_len,
                  "Training context (default: the base config's, else min(1024, "
                  "max_position_embeddings))");
  cmd->add_option("--steps", o.steps, "Optimizer steps of the continuation");
  cmd->add_option("--tokens", o.tokens, "Or: planned tokens of the continuation");
  cmd->add_option("--batch-size", o.batch_size, "Rows per micro-batch");
  cmd->add_option("--lr", o.lr, "Peak learning rate");
  cmd->add_option("--warmup-steps", o.warmup_steps, "Warm-up steps");
  cmd->add_option("--seed", o.seed, "train.seed (data order of synthetic sources)");
  cmd->callback([] { train::import_hf(o, stdout); });
}

}  // namespace moba::cli
