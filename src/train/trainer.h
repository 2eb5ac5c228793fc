// The training loop of `moba train`, as a class so that tests can drive it: build, run
// (optionally stopping early to simulate an interruption), read the state.
//
// One step: for each of grad_accum micro-batches, forward + backward (gradients summed,
// scaled by 1/grad_accum); stop on NaN/inf naming the step and the tensor; clip the
// global norm; AdamW with the scheduled learning rate; log; validate and checkpoint when
// due. The run folder follows docs/run_format.md.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/folder_lock.h"
#include "dist/communicator.h"
#include "model/model.h"
#include "train/adamw.h"
#include "train/batch_source.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/evaluate.h"

namespace moba::model::cuda {
class ModelCuda;
}

namespace moba::train {

class HostGradReducer;
class DeviceGradReducer;

struct TrainerOptions {
  std::string run_dir;           // RUN_DIR, created if needed
  std::string data_dir;          // overrides config.data when not empty
  bool resume = false;           // continue RUN_DIR from its checkpoint
  std::FILE* progress = stdout;  // progress lines; nullptr = silent
  // "cpu" (float32, OpenBLAS) or "cuda" (bf16 mixed precision on the GPU, docs/trainer_gpu.md;
  // needs a build with the CUDA kernels and a device).
  std::string device = "cpu";
  bool verbose = false;          // the whole configuration on `progress`, not one summary line
  std::FILE* result = nullptr;   // the closing "finished: ..." line; nullptr = `progress`
  // Data parallel (docs/distributed.md): this process is rank comm->rank() of comm->size().
  // Each rank trains on its rows of every global batch (train.batch_size rows, a multiple
  // of the ranks), the gradients are averaged over the ranks, every rank takes the same
  // step. Only rank 0 writes: the run folder, metrics, checkpoints, progress and result
  // lines (the others' progress and result are ignored). nullptr: a single process. On
  // the GPU path the communicator must be a dist::NcclCommunicator on this GPU.
  dist::Communicator* comm = nullptr;
  // Context parallel (docs/distributed.md, "In the trainer"): this process is rank
  // cp_comm->rank() of a group of R = cp_comm->size() ranks that train every sequence
  // together. Each rank reads the same global micro-batches as a single process and, row by
  // row, runs the model (Model::set_context_parallel) on its shard of the row, positions
  // [r T / R, (r + 1) T / R); the gradients are summed over the group (the model's scale
  // makes the sum the gradient) and every rank takes the same step. Only rank 0 writes, as
  // for `comm`; every rank validates (the forward is collective), rank 0 records it. The CPU
  // model only, over a group that takes host memory (dist::FakeGroup); not with `comm`, not
  // with --device cuda, not with packed documents (moba::Error: train/context_parallel.h).
  // nullptr: off.
  dist::Communicator* cp_comm = nullptr;
  // Every this many steps (and at the last step, and before every checkpoint) the ranks
  // compare a checksum of their parameters (data or context parallel); a difference stops the
  // job on every rank with an error naming the step and the ranks. 0: only at the start and
  // before checkpoints.
  int64_t dist_check_every = 100;
  size_t dist_bucket_bytes = size_t{25} << 20;  // the gradient buckets' cap (grad_buckets.h)
};

class Trainer {
 public:
  // Validates the configuration, prepares RUN_DIR (config.toml, run.json), initialises or
  // (resume) restores the model, the optimizer and the data position. `data` overrides the
  // configured source (tests).
  Trainer(const RunConfig& cfg, TrainerOptions opt, std::unique_ptr<BatchSource> data = nullptr);
  ~Trainer();

  // Trains to train.steps; with stop_after >= 0 stops once that many steps are done,
  // writing nothing more (as if killed): tests of resume use it.
  void run(int64_t stop_after = -1);

  const RunConfig& config() const { return cfg_; }
  const TrainState& state() const { return state_; }
  // The parameters (on the GPU path: as of the last checkpoint or sync_from_device()).
  std::span<float> params() { return params_; }
  // GPU path: copies the parameters and AdamW moments from the device into params() and
  // the optimizer (done before every checkpoint). No-op on the CPU.
  void sync_from_device();
  bool on_gpu() const { return gpu_ != nullptr; }
  int rank() const { return rank_; }
  int world() const { return world_; }
  model::Model<float>& model() { return model_; }
  const std::vector<double>& step_losses() const { return losses_; }  // this session's
  const EvalResult& last_eval() const { return last_eval_; }

 private:
  void prepare_run_dir();
  void restore_or_init();
  void finish_setup();
  bool moba_phase() const;
  double train_step(double lr, bool moba);  // returns the gradient norm before clipping
  void validate_now();
  void write_run_json(const char* status) const;
  // One optimizer step's work on each path: adds the step's mean loss and executed FLOPs
  // into loss and flops, returns the gradient norm before clipping.
  double cpu_train_step(int64_t step, double lr, bool moba, double& loss, double& flops);
  double gpu_train_step(int64_t step, double lr, bool moba, double& loss, double& flops);
  // The micro-batch `index` as this rank trains it: the whole global batch in a single
  // process, else this rank's rows, with its loss weight (data_parallel.h; 1 alone).
  model::Batch micro_batch(uint64_t index, double& weight);
  // Context parallel: the global micro-batch `state_.next_batch` as every rank reads it,
  // checked (one document per row), then train(shard, w) for each row that counts a
  // position: this rank's shard of the row and the row's weight in the batch's mean loss
  // (train/context_parallel.h). Collective through `train`: the same rows in the same order
  // on every rank. Does not move state_.next_batch.
  void context_parallel_rows(int64_t step,
                             const std::function<void(const model::Batch&, double)>& train);
  // Data parallel: sums the step's (weighted) loss and FLOPs over the ranks. Context
  // parallel: the FLOPs (the loss is the group's already).
  void reduce_step_values(double& loss, double& flops);
  // Data or context parallel: the ranks compare their parameters' checksum (data_parallel.h).
  void check_ranks_agree(int64_t step);
  bool writer() const { return rank_ == 0; }  // the rank that writes RUN_DIR
  // The group this rank trains in (TrainerOptions::comm or cp_comm); null alone.
  dist::Communicator* group() const { return opt_.comm ? opt_.comm : opt_.cp_comm; }
  RunConfig cfg_;
  TrainerOptions opt_;
  std::unique_ptr<FolderLock> lock_;  // RUN_DIR/.lock, held while the trainer lives
  std::unique_ptr<BatchSource> data_;
  model::Model<float> model_;
  std::unique_ptr<model::cuda::ModelCuda> gpu_;  // the CUDA path (TrainerOptions::device)
  int rank_ = 0, world_ = 1;                     // group()'s
  std::unique_ptr<HostGradReducer> host_reducer_;      // data parallel, CPU
  std::unique_ptr<DeviceGradReducer> device_reducer_;  // data parallel, GPU (NCCL)
  double peak_flops_ = 0.0;  // the device's dense bf16 peak for MFU; 0: unknown (CPU)
  std::vector<float> params_, grads_;
  AdamW adam_;
  TrainState state_;
  std::vector<Window> val_windows_;
  std::vector<double> losses_;
  EvalResult last_eval_;
  bool last_eval_moba_ = false;  // the attention last_eval_ used (MoBA layers ran MoBA)
  std::string attention_label_;
  std::string validation_data_;  // what the validation windows come from (run.json)
  double session_start_elapsed_ = 0.0;  // state_.elapsed_s when this session began
  double session_train_s_ = 0.0;        // time spent in train steps this session
  int64_t session_steps_ = 0;
};

// The attention a step uses: MoBA layers run MoBA while the tokens seen before the step are
// below moba_to_full_at x tokens_planned, full attention after (the MoBA-to-full switch).
bool moba_phase_at(const RunConfig& cfg, int64_t tokens_before_step);
// The attention of the step that produced `state` (validation and `moba eval` use it); at
// step 0, the attention of the first step.
bool last_step_used_moba(const RunConfig& cfg, const TrainState& state);

// Data read against a run trained on other data must be tokenized alike: the same tokenizer
// kind and vocabulary and, for BPE, the same SentencePiece model, or its losses mean nothing
// next to training's. `what` names the second folder in the message ("eval.data", "--data").
// No check when train_data is a synthetic source.
void check_same_tokenizer(const std::string& train_data, const std::string& eval_data,
                          const std::string& what = "eval.data");

// Throws moba::Error "step N: gradient of <tensor> holds NaN/inf ..." for the first
// tensor of `grads` with a non-finite element.
void check_finite_gradients(const model::ParamLayout& layout, std::span<const float> grads,
                            int64_t step);

}  // namespace moba::train
