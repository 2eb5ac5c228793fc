#include "train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include "core/error.h"
#include "core/folder_lock.h"
#include "core/safe_io.h"
#include "core/timing.h"
#include "data/dataset.h"
#include "train/context_parallel.h"
#include "train/data_parallel.h"
#ifdef MOBA_WITH_CUDA
#include "core/cuda_check.cuh"
#include "model/cuda/dev_buf.h"
#include "model/cuda/model_cuda.h"
#else
// A build without CUDA never makes one, but Trainer's unique_ptr needs a complete type.
namespace moba::model::cuda {
class ModelCuda {};
}  // namespace moba::model::cuda
#endif
#ifdef MOBA_WITH_NCCL
#include "dist/nccl_communicator.h"
#include "train/data_parallel_cuda.h"
#else
// Likewise for the GPU's gradient reducer in a build without NCCL.
namespace moba::train {
class DeviceGradReducer {};
}  // namespace moba::train
#endif
#include "train/memory.h"
#include "train/metrics.h"
#include "train/progress.h"
#include "train/schedule.h"
#include "train/supports.h"

namespace moba::train {
namespace fs = std::filesystem;
namespace {

// What state.json records of the attention: enough to tell a MoBA checkpoint from a
// full-attention one, and MoBA runs of different block sizes or top-k apart.
std::string attention_signature(const model::ModelConfig& m) {
  const model::AttentionConfig& a = m.attention;
  std::ostringstream os;
  os << model::attention_kind_name(a.kind);
  if (a.kind == model::AttentionKind::moba)
    os << " S=" << a.block_size << " K=" << a.top_k
       << " full_last_layers=" << a.full_attention_last_layers
       << " moba_to_full_at=" << a.moba_to_full_at;
  return os.str();
}

// Context parallel's refusals (train/context_parallel.h), before anything else is checked,
// allocated or written.
void check_parallel_options(const TrainerOptions& opt, const RunConfig& cfg) {
  if (opt.cp_comm)
    check_context_parallel(cfg, opt.cp_comm->size(), opt.device, opt.comm != nullptr);
}

#ifdef MOBA_WITH_CUDA
// Collective: every rank's `mine` (the same length on all) concatenated in rank order,
// through device buffers (a group of the GPU path takes device memory).
std::vector<float> gather_on_device(dist::Communicator& comm, const std::vector<float>& mine) {
  model::cuda::DevBuf send, recv;
  const size_t n = mine.size(), all = n * static_cast<size_t>(comm.size());
  send.resize(std::max<size_t>(n, 1) * sizeof(float));
  recv.resize(std::max<size_t>(all, 1) * sizeof(float));
  if (n) CUDA_CHECK(cudaMemcpy(send.p, mine.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  comm.all_gather(std::span<const float>(send.as<float>(), n), std::span<float>(recv.as<float>(), all));
  std::vector<float> out(all);
  if (all) CUDA_CHECK(cudaMemcpy(out.data(), recv.p, all * sizeof(float), cudaMemcpyDeviceToHost));
  return out;
}
#endif

}  // namespace

void check_same_tokenizer(const std::string& train_data, const std::string& eval_data,
                          const std::string& what) {
  if (train_data.rfind("synthetic:", 0) == 0) return;  // its own check: eval.data must be a folder
  MOBA_CHECK(fs::is_regular_file(fs::path(eval_data) / "manifest.json"), what, " '", eval_data,
             "' is not a folder made by `moba prepare` (no manifest.json)");
  const data::OpenOptions headers_only{.verify = false};
  const nlohmann::json a = data::Dataset::open(train_data, headers_only).manifest().at("tokenizer"),
                       b = data::Dataset::open(eval_data, headers_only).manifest().at("tokenizer");
  MOBA_CHECK(a.value("kind", "") == b.value("kind", "") &&
                 a.value("vocab_size", 0) == b.value("vocab_size", 0),
             what, " '", eval_data, "' was tokenized with ", b.dump(), ", the training data '",
             train_data, "' with ", a.dump(), ": prepare it with the same tokenizer "
             "(moba prepare --tokenizer-model DATA/tokenizer.model)");
  if (a.value("kind", "") == "bpe")
    MOBA_CHECK(read_regular_file((fs::path(train_data) / "tokenizer.model").string(), "tokenizer model") ==
                   read_regular_file((fs::path(eval_data) / "tokenizer.model").string(), "tokenizer model"),
               what, " '", eval_data, "' has another SentencePiece model than the training "
               "data '", train_data, "': prepare it with --tokenizer-model ", train_data,
               "/tokenizer.model");
}

void check_finite_gradients(const model::ParamLayout& layout, std::span<const float> grads,
                            int64_t step) {
  for (const model::TensorInfo& t : layout.tensors)
    for (size_t i = 0; i < t.size; ++i) {
      const float g = grads[t.offset + i];
      MOBA_CHECK(std::isfinite(g), "step ", step, ": the gradient of ", t.name, " holds ",
                 std::isnan(g) ? "NaN" : "inf", " (element ", i,
                 "); the run stopped, the last checkpoint is intact");
    }
}

Trainer::Trainer(const RunConfig& cfg, TrainerOptions opt, std::unique_ptr<BatchSource> data)
    // `cfg` was validated where it entered (the TOML reader, the sweep planner). What this
    // device can run (the GPU kernels' limits, the memory) is checked before the first
    // allocation below (model, parameters, moments) and before RUN_DIR is touched.
    : cfg_((check_parallel_options(opt, cfg),
            check_supported(opt.cp_comm ? context_parallel_rank_config(cfg, opt.cp_comm->size(),
                                                                       opt.device)
                                        : cfg,
                            opt.device),
            cfg.resolved())),
      opt_(std::move(opt)),
      data_(data ? std::move(data) : make_batch_source(cfg_, opt_.data_dir)),
      model_(cfg_.model),
      params_(model_.layout().total),
      grads_(model_.layout().total),
      adam_(model_.layout(), cfg_.train) {
  MOBA_CHECK(!opt_.run_dir.empty(), "--out RUN_DIR is required");
  if (dist::Communicator* g = group()) {  // data or context parallel (not both: checked above)
    rank_ = g->rank();
    world_ = g->size();
    MOBA_CHECK(!opt_.comm || cfg_.train.batch_size % world_ == 0,
               "data parallel: train.batch_size = ", cfg_.train.batch_size,
               " rows cannot be split evenly over ", world_,
               " ranks; choose a batch size that is a multiple of the number of GPUs");
    MOBA_CHECK(opt_.dist_check_every >= 0, "dist_check_every must be >= 0, got ",
               opt_.dist_check_every);
    if (!writer()) opt_.progress = opt_.result = nullptr;  // rank 0 speaks for the job
  }
  if (opt_.cp_comm) model_.set_context_parallel(opt_.cp_comm);
  if (opt_.device == "cuda") {
#ifdef MOBA_WITH_CUDA
    gpu_ = std::make_unique<model::cuda::ModelCuda>(cfg_.model);
    // Context parallel on the GPU: the group must take device memory (NcclCommunicator, or a
    // HostStagedCommunicator in tests).
    if (opt_.cp_comm) gpu_->set_context_parallel(opt_.cp_comm);
    // The FLOPs logged are the job's, summed over the ranks: so is the peak.
    peak_flops_ = model::cuda::device_peak_bf16_flops() * world_;
#else
    MOBA_CHECK(false, "--device cuda: this build of moba has no CUDA kernels (configure with "
               "-DMOBA_CUDA=ON on a machine with the CUDA toolkit)");
#endif
  }
  if (!opt_.data_dir.empty()) cfg_.data = opt_.data_dir;  // config.toml records what ran
  if (writer()) prepare_run_dir();
  else restore_or_init();  // the other ranks only read RUN_DIR: its checkpoint, on resume
  finish_setup();
}

// Rank 0 (or the single process): the run folder, its lock and files, then the state.
void Trainer::prepare_run_dir() {
  const fs::path run(opt_.run_dir);
  const std::string config_text = run_config_text(cfg_, opt_.run_dir);
  MOBA_CHECK(!fs::exists(run) || fs::is_directory(run), "--out '", opt_.run_dir,
             "' exists and is not a folder");
  MOBA_CHECK(!opt_.resume || fs::is_regular_file(run / "config.toml"), "--resume: '",
             opt_.run_dir, "' holds no run (no config.toml)");
  try {
    fs::create_directories(run);
  } catch (const fs::filesystem_error& e) {  // e.g. a parent of --out is a file
    MOBA_CHECK(false, "--out '", opt_.run_dir, "': cannot create the run folder (",
               e.code().message(), ")");
  }
  // One command per run folder: a second `moba train` on it stops here, before writing.
  lock_ = std::make_unique<FolderLock>((run / ".lock").string(), opt_.run_dir);
  if (opt_.resume) {
    std::string changed;
    for (const std::string& d : run_config_diff(load_run_config(opt_.run_dir), cfg_))
      changed += "\n  " + d;
    MOBA_CHECK(changed.empty(), "--resume: the configuration differs from the one the run "
               "started with ('", (run / "config.toml").string(), "'):", changed,
               "\nresume with that file (or without --config and --set)");
    restore_or_init();
    truncate_metrics((run / "metrics.jsonl").string(), state_.step);
  } else {
    MOBA_CHECK(!fs::exists(run / "config.toml") && !fs::exists(run / "metrics.jsonl") &&
                   !has_checkpoint(opt_.run_dir),
               "'", opt_.run_dir,
               "' already holds a run; pass --resume to continue it, or choose another --out");
    for (const fs::directory_entry& e : fs::directory_iterator(run))
      MOBA_CHECK(e.path().filename() == ".lock", "--out '", opt_.run_dir,
                 "' is not empty and holds no moba run (it has '", e.path().filename().string(),
                 "'); choose a new or empty folder");
    write_file_atomic((run / "config.toml").string(), config_text);
    restore_or_init();
  }
}

// The parameters, the optimizer and the position: from RUN_DIR's checkpoint on --resume,
// else initialised from the seed. Reads RUN_DIR only.
void Trainer::restore_or_init() {
  if (opt_.resume && has_checkpoint(opt_.run_dir)) {
    state_ = load_checkpoint(opt_.run_dir, model_.layout(), params_, adam_);
    MOBA_CHECK(state_.seed == cfg_.train.seed, "--resume: checkpoint seed ", state_.seed,
               " differs from train.seed ", cfg_.train.seed);
    // A checkpoint trained with other attention (MoBA weights in a full-attention run) would
    // load silently: the tensors have the same shapes.
    MOBA_CHECK(state_.attention.empty() || state_.attention == attention_signature(cfg_.model),
               "--resume: the checkpoint in '", opt_.run_dir, "' was trained with attention '",
               state_.attention, "', the configuration says '",
               attention_signature(cfg_.model), "'");
    return;
  }
  // Killed before its first checkpoint: nothing was kept, so the run starts again from
  // step 0 (the data and the initialisation are functions of the seed: the same run).
  if (opt_.resume && opt_.progress)
    std::fprintf(opt_.progress, "note: '%s' has no checkpoint yet; starting it from step 0\n",
                 opt_.run_dir.c_str());
  model::init_params<float>(model_.layout(), cfg_.train.seed, params_);
  state_.seed = cfg_.train.seed;
}

// After the state: the device copy, the validation windows, run.json, the data-parallel
// reducers and the ranks' first comparison.
void Trainer::finish_setup() {
#ifdef MOBA_WITH_CUDA
  if (gpu_) {
    gpu_->upload_params(params_);
    gpu_->upload_moments(adam_.m(), adam_.v());  // zeros on a fresh run
  }
#endif
  state_.attention = attention_signature(cfg_.model);  // recorded by every checkpoint
  session_start_elapsed_ = state_.elapsed_s;
  attention_label_ = model::attention_label(cfg_.model);
  if (opt_.comm) {
    if (gpu_) {
#ifdef MOBA_WITH_NCCL
      auto* nccl = dynamic_cast<dist::NcclCommunicator*>(opt_.comm);
      MOBA_CHECK(nccl != nullptr, "data parallel on --device cuda needs the NCCL communicator");
      device_reducer_ = std::make_unique<DeviceGradReducer>(*nccl, *gpu_, opt_.dist_bucket_bytes);
#else
      MOBA_CHECK(false, "data parallel on --device cuda: this build of moba has no NCCL "
                 "(docs/distributed.md, NCCL in the build)");
#endif
    } else {
      host_reducer_ = std::make_unique<HostGradReducer>(model_.layout(), sizeof(float),
                                                        opt_.dist_bucket_bytes);
    }
  }
  // Every rank starts from the same weights (the same seed, or the same checkpoint): also
  // the first meeting of the ranks, so that one that cannot start stops them all here.
  if (group()) check_ranks_agree(state_.step);
  // Validation is rank 0's under data parallel; under context parallel every rank takes
  // part in its forward. run.json is rank 0's.
  if (!writer() && !opt_.cp_comm) return;
  if (cfg_.eval.data.empty()) {
    val_windows_ = data_->validation();
    validation_data_ = data_->describe();
  } else {  // another corpus's val split (eval.data, `--eval-data`)
    check_same_tokenizer(cfg_.data, cfg_.eval.data);
    const std::unique_ptr<BatchSource> eval = make_batch_source(cfg_, cfg_.eval.data);
    val_windows_ = eval->validation();
    validation_data_ = eval->describe();
  }
  write_run_json("running");
}

Trainer::~Trainer() = default;

void Trainer::sync_from_device() {
#ifdef MOBA_WITH_CUDA
  if (!gpu_) return;
  gpu_->download_params(params_);
  gpu_->download_moments(adam_.m(), adam_.v());
#endif
}

bool moba_phase_at(const RunConfig& cfg, int64_t tokens_before_step) {
  const double switch_at =
      cfg.model.attention.moba_to_full_at * static_cast<double>(cfg.tokens_planned());
  return static_cast<double>(tokens_before_step) < switch_at;
}

bool last_step_used_moba(const RunConfig& cfg, const TrainState& state) {
  // The step that brought the run to state.tokens began at state.tokens - tokens_per_step;
  // before any step, the attention the first step will use.
  const int64_t per_step = cfg.train.tokens_per_step(cfg.model.seq_len);
  return moba_phase_at(cfg, state.step > 0 ? state.tokens - per_step : state.tokens);
}

bool Trainer::moba_phase() const { return moba_phase_at(cfg_, state_.tokens); }

void Trainer::write_run_json(const char* status) const {
  if (!writer()) return;
  const model::ModelConfig& m = cfg_.model;
  const model::ParamCounts pc = model::param_counts(m);
  // The whole configuration under "config" (from the schema), and the keys `moba report`
  // reads at the top level, copied from it.
  const nlohmann::json config = config_json(cfg_);
  nlohmann::json j = {{"name", cfg_.name},
                      {"attention", model::attention_label(m)},
                      {"params_non_embedding", pc.non_embedding},
                      {"params_total", pc.total},
                      {"tokens_planned", cfg_.tokens_planned()},
                      {"status", status},
                      {"bytes_per_token", data_->bytes_per_token()},
                      {"validation_data", validation_data_},
                      {"config", config}};
  for (const auto& [table, key] : {std::pair{"attention", "block_size"}, {"attention", "top_k"},
                                   {"model", "layers"}, {"model", "heads"}, {"model", "kv_heads"},
                                   {"model", "width"}, {"model", "head_dim"}, {"model", "seq_len"},
                                   {"model", "vocab_size"}})
    j[key] = config[table][key];
  write_file_atomic((fs::path(opt_.run_dir) / "run.json").string(), j.dump(2) + "\n");
}

// The CUDA path of train_step: the same sequence, on the device (docs/trainer_gpu.md). The
// gradients stay on the GPU; they come to the host only to name a non-finite tensor.
double Trainer::gpu_train_step(int64_t step, double lr, bool moba, double& loss,
                               double& flops) {
#ifdef MOBA_WITH_CUDA
  const int64_t accum = cfg_.train.grad_accum;
  gpu_->zero_grads();
  // Data parallel: the sum over the ranks is the mean because each rank's loss scale holds
  // 1 / world (and its slice's weight); the buckets are all-reduced during the last
  // micro-batch's backward (DeviceGradReducer).
  std::vector<std::pair<uint64_t, double>> ran;  // (micro-batch, weight) of each backward
  auto train_on = [&](const model::Batch& batch, double scale) {
    try {
      gpu_->train_micro_batch(batch, moba, scale);
    } catch (const Error& e) {
      MOBA_CHECK(false, "step ", step, ": ", e.what(),
                 "; the run stopped, the last checkpoint is intact");
    }
    flops += gpu_->last_flops();
  };
  for (int64_t micro = 0; micro < accum && opt_.cp_comm; ++micro) {
    context_parallel_rows(step, [&](const model::Batch& shard, double w) {
      train_on(shard, w / static_cast<double>(accum));
      ran.emplace_back(state_.next_batch, w);
    });
    ++state_.next_batch;
  }
  for (int64_t micro = 0; micro < accum && !opt_.cp_comm; ++micro) {
    double w = 1.0;
    const model::Batch batch = micro_batch(state_.next_batch, w);
    if (device_reducer_ && micro == accum - 1) device_reducer_->arm();
    if (w > 0.0) {  // a slice whose mask counts nothing has no loss and no gradient
      train_on(batch, w / (static_cast<double>(accum) * static_cast<double>(world_)));
      ran.emplace_back(state_.next_batch, w);
    }
    ++state_.next_batch;
  }
#ifdef MOBA_WITH_NCCL
  if (device_reducer_) device_reducer_->finish();
#endif
  // Context parallel: the ranks' parts summed (no division: the model's scale makes the sum
  // the step's gradient), in place on the device, once the backwards are done.
  if (opt_.cp_comm && world_ > 1) {
    CUDA_CHECK(cudaStreamSynchronize(gpu_->stream()));
    opt_.cp_comm->all_reduce_sum(std::span<float>(gpu_->device_grads(), model_.layout().total));
  }
  // Collective under context parallel: each rank's parts summed into the rows' global means.
  const std::vector<double> losses = gpu_->take_losses();
  MOBA_CHECK(losses.size() == ran.size(), "internal: ", losses.size(), " losses for ",
             ran.size(), " micro-batches");
  for (size_t i = 0; i < ran.size(); ++i) {
    const double l = losses[i];
    MOBA_CHECK(std::isfinite(l), "step ", step, ": the training loss is ",
               std::isnan(l) ? "NaN" : "inf", " (micro-batch ", ran[i].first,
               opt_.comm && world_ > 1 ? ", rank " + std::to_string(rank_) : std::string(),
               "); the run stopped, the last checkpoint is intact");
    loss += ran[i].second * l / static_cast<double>(accum);
  }
  reduce_step_values(loss, flops);
  const double gnorm = gpu_->grad_norm();
  if (!std::isfinite(gnorm)) {  // find and name the tensor
    gpu_->download_grads(grads_);
    check_finite_gradients(model_.layout(), grads_, step);
  }
  const float scale = clip_factor(gnorm, cfg_.train.grad_clip);  // applied inside AdamW
  const int64_t t = adam_.steps_done() + 1;
  const OptimConfig& oc = cfg_.train;
  gpu_->adamw_step({t, lr, oc.beta1, oc.beta2, oc.eps, oc.weight_decay, scale});
  adam_.set_steps_done(t);
  return gnorm;
#else
  (void)step, (void)lr, (void)moba, (void)loss, (void)flops;
  return 0.0;
#endif
}

double Trainer::cpu_train_step(int64_t step, double lr, bool moba, double& loss,
                               double& flops) {
  std::fill(grads_.begin(), grads_.end(), 0.0f);
  const int64_t accum = cfg_.train.grad_accum;
  // One forward and backward, its mean loss weighted w in the step's.
  auto train_on = [&](const model::Batch& batch, double w) {
    double l = 0.0;
    try {
      l = model_.forward(params_, batch, moba);
    } catch (const Error& e) {  // e.g. the MoBA gate meeting NaN in q or k
      MOBA_CHECK(false, "step ", step, ": ", e.what(),
                 "; the run stopped, the last checkpoint is intact");
    }
    MOBA_CHECK(std::isfinite(l), "step ", step, ": the training loss is ",
               std::isnan(l) ? "NaN" : "inf", " (micro-batch ", state_.next_batch,
               opt_.comm && world_ > 1 ? ", rank " + std::to_string(rank_) : std::string(),
               "); the run stopped, the last checkpoint is intact");
    model_.backward(params_, grads_, w / static_cast<double>(accum));
    loss += w * l / static_cast<double>(accum);
    flops += model_.last_flops();
  };
  for (int64_t micro = 0; micro < accum; ++micro) {
    if (opt_.cp_comm) {
      context_parallel_rows(step, train_on);
    } else {
      double w = 1.0;
      const model::Batch batch = micro_batch(state_.next_batch, w);
      // A slice whose mask counts nothing has no loss and no gradient.
      if (w != 0.0) train_on(batch, w);
    }
    ++state_.next_batch;
  }
  // Data parallel: every rank ends with the ranks' mean gradient, then takes the same step.
  if (host_reducer_) host_reducer_->reduce<float>(*opt_.comm, grads_);
  // Context parallel: each rank holds its shards' part of the gradient, scaled by the model
  // so that the sum over the ranks (no division) is the step's gradient; with the fake
  // group summed in rank order, so bit for bit the same on every rank.
  if (opt_.cp_comm) opt_.cp_comm->all_reduce_sum(std::span<float>(grads_));
  reduce_step_values(loss, flops);
  check_finite_gradients(model_.layout(), grads_, step);
  const double gnorm = grad_norm(grads_);
  clip_grads(grads_, gnorm, cfg_.train.grad_clip);
  adam_.step(params_, grads_, lr);
  return gnorm;
}

void Trainer::context_parallel_rows(
    int64_t step, const std::function<void(const model::Batch&, double)>& train) {
  const model::Batch global = data_->train_batch(state_.next_batch);
  check_context_parallel_batch(global, step, state_.next_batch);
  for (int64_t row = 0; row < global.B; ++row) {
    const double w = row_weight(global, row);
    if (w > 0.0) train(row_shard(global, row, rank_, world_), w);  // else no loss, on every rank
  }
}

model::Batch Trainer::micro_batch(uint64_t index, double& weight) {
  weight = 1.0;
  if (!opt_.comm) return data_->train_batch(index);
  // Every rank reads the same global micro-batch (so the data order does not depend on the
  // number of ranks) and keeps its rows; its weight needs the whole batch's counts.
  const model::Batch global = data_->train_batch(index);
  weight = slice_weight(global, rank_, world_);
  return rank_slice(global, rank_, world_);
}

void Trainer::reduce_step_values(double& loss, double& flops) {
  if (opt_.cp_comm) {  // the loss is already the group's, the same on every rank
    double f[1] = {flops};
    opt_.cp_comm->all_reduce_sum_host(f);
    flops = f[0];
    return;
  }
  if (!opt_.comm) return;
  double v[2] = {loss, flops};
  opt_.comm->all_reduce_sum_host(v);
  loss = v[0] / static_cast<double>(world_);
  flops = v[1];
}

void Trainer::check_ranks_agree(int64_t step) {
  if (!group()) return;
#ifdef MOBA_WITH_CUDA
  if (gpu_) gpu_->download_params(params_);
#endif
  check_same_params(*group(), params_checksum<float>(params_), step,
                    opt_.cp_comm ? "context parallel" : "data parallel");
}

double Trainer::train_step(double lr, bool moba) {
  const int64_t step = state_.step + 1;  // 1-based number of this update
  double loss = 0.0, flops = 0.0;
  const double gnorm = gpu_ ? gpu_train_step(step, lr, moba, loss, flops)
                            : cpu_train_step(step, lr, moba, loss, flops);
  const int64_t tokens = cfg_.train.tokens_per_step(cfg_.model.seq_len);
  state_.step = step;
  state_.tokens += tokens;
  state_.flops_6nd = 6.0 * static_cast<double>(model::param_counts(cfg_.model).non_embedding) *
                     static_cast<double>(state_.tokens);
  state_.flops_exec += flops;
  losses_.push_back(loss);
  return gnorm;
}

// A validation uses the attention of the last training step: after the final step,
// tokens == tokens_planned and moba_phase() (the attention of the *next* step) would be full
// attention even for a pure MoBA run (moba_to_full_at = 1); that evaluated MoBA-trained
// weights with full attention.
void Trainer::validate_now() {
  const bool moba = cfg_.model.attention.kind == model::AttentionKind::moba &&
                    last_step_used_moba(cfg_, state_);
  last_eval_moba_ = moba;
#ifdef MOBA_WITH_CUDA
  if (gpu_ && opt_.cp_comm && world_ > 1) {  // collective, as on the CPU below
    last_eval_ = evaluate(
        [&](const model::Batch& b) {
          std::vector<float> all;  // (B*T), row after row
          for (int64_t row = 0; row < b.B; ++row) {
            gpu_->forward(row_shard(b, row, rank_, world_), moba);
            gpu_->take_losses();  // collective; validation reads the per-token losses
            const std::vector<float> mine = gpu_->token_losses();
            const std::vector<float> gathered = gather_on_device(*opt_.cp_comm, mine);
            all.insert(all.end(), gathered.begin(), gathered.end());
          }
          return all;
        },
        val_windows_, cfg_.eval.batch_size, cfg_.eval.bucket_size);
    return;
  }
  if (gpu_) {
    last_eval_ = evaluate(
        [&](const model::Batch& b) {
          gpu_->forward(b, moba);
          gpu_->take_losses();  // validation reads the per-token losses
          return gpu_->token_losses();
        },
        val_windows_, cfg_.eval.batch_size, cfg_.eval.bucket_size);
    return;
  }
#endif
  if (opt_.cp_comm) {  // collective: every rank runs its shards of every window
    last_eval_ = evaluate(
        [&](const model::Batch& b) {
          return context_parallel_token_losses(model_, params_, b, moba, *opt_.cp_comm);
        },
        val_windows_, cfg_.eval.batch_size, cfg_.eval.bucket_size);
    return;
  }
  last_eval_ = evaluate(model_, params_, val_windows_, cfg_.eval.batch_size, cfg_.eval.bucket_size,
                        moba);
}

void Trainer::run(int64_t stop_after) {
  const fs::path run(opt_.run_dir);
  std::unique_ptr<MetricsLog> log;  // rank 0's
  if (writer()) log = std::make_unique<MetricsLog>((run / "metrics.jsonl").string());
  const auto session_t0 = Clock::now();
  const int64_t steps = cfg_.train.steps;
  const double tokens_per_step =
      static_cast<double>(cfg_.train.tokens_per_step(cfg_.model.seq_len));
  if (opt_.progress) {
    const model::ParamCounts pc = model::param_counts(cfg_.model);
    if (opt_.verbose) std::fprintf(opt_.progress, "%s\n", to_toml(cfg_).c_str());
    else
      std::fprintf(opt_.progress, "config: %s (--verbose prints it)\n",
                   (run / "config.toml").string().c_str());
    std::fprintf(
        opt_.progress,
        "model: %s non-embedding parameters, %s in total; attention %s\n"
        "data: %s\nrun: %s, %lld steps of %lld tokens%s%s\n\n",
        format_count(static_cast<double>(pc.non_embedding)).c_str(),
        format_count(static_cast<double>(pc.total)).c_str(),
        model::attention_label(cfg_.model).c_str(), data_->describe().c_str(), opt_.run_dir.c_str(),
        static_cast<long long>(steps), static_cast<long long>(tokens_per_step),
        opt_.cp_comm ? (", context parallel: every sequence over " + std::to_string(world_) +
                        " ranks of " + std::to_string(cfg_.model.seq_len / world_) + " positions")
                           .c_str()
                     : "",
        opt_.resume ? (", resumed after step " + std::to_string(state_.step)).c_str() : "");
    std::fflush(opt_.progress);
  }
  auto due = [&](int64_t every) {
    return state_.step == steps || (every > 0 && state_.step % every == 0);
  };
  double window_s = 0.0, window_flops = 0.0;  // since the last progress line
  int64_t window_steps = 0;
  try {
    while (state_.step < steps && (stop_after < 0 || state_.step < stop_after)) {
      const double lr = learning_rate(cfg_.train, state_.step);
      const bool moba = moba_phase();
      const double flops_before = state_.flops_exec;
      const auto t0 = Clock::now();
      const double gnorm = train_step(lr, moba);
      const double dt = seconds_since(t0);
      session_train_s_ += dt;
      ++session_steps_;
      state_.elapsed_s = session_start_elapsed_ + seconds_since(session_t0);
      const int64_t s = state_.step;
      if (log)
        log->write({{"kind", "train"},
                   {"step", s},
                   {"tokens", state_.tokens},
                   {"loss", losses_.back()},
                   {"lr", lr},
                   {"grad_norm", gnorm},
                   {"tokens_per_s", tokens_per_step / dt},
                   {"mfu", peak_flops_ > 0
                               ? nlohmann::json((state_.flops_exec - flops_before) / dt / peak_flops_)
                               : nlohmann::json(nullptr)},
                   {"flops_6nd", state_.flops_6nd},
                   {"flops_exec", state_.flops_exec},
                   {"elapsed_s", state_.elapsed_s}});
      window_s += dt;
      window_steps += 1;
      window_flops += state_.flops_exec - flops_before;
      if (s % cfg_.log_every == 0 || s == steps || s == 1) {
        // Speeds over the steps since the last line; the ETA from the session's average.
        const double per_step = session_train_s_ / static_cast<double>(session_steps_);
        print_step(opt_.progress, {s, steps, losses_.back(), lr, gnorm,
                                   tokens_per_step * static_cast<double>(window_steps) / window_s,
                                   window_flops / window_s * 1e-9, state_.elapsed_s,
                                   per_step * static_cast<double>(steps - s),
                                   moba ? attention_label_.c_str() : "full",
                                   peak_flops_ > 0 ? window_flops / window_s / peak_flops_ : -1.0});
        window_s = window_flops = 0.0;
        window_steps = 0;
      }
      // Data parallel: the other ranks go on to the next step's collectives and wait there
      // while rank 0 validates and writes (the communicator's timeout must cover both).
      // Context parallel: every rank takes part in the validation, rank 0 records it.
      if (due(cfg_.eval.every) && (writer() || opt_.cp_comm)) {
        validate_now();
        if (writer()) {
          log->write(val_record(last_eval_, state_, last_eval_moba_));
          print_eval(opt_.progress, s, last_eval_);
        }
      }
      const bool checkpoint = due(cfg_.checkpoint_every);
      if (group() && (checkpoint || s == steps ||
                      (opt_.dist_check_every > 0 && s % opt_.dist_check_every == 0)))
        check_ranks_agree(s);  // what rank 0 saves is every rank's state
      if (checkpoint && writer()) {
        state_.elapsed_s = session_start_elapsed_ + seconds_since(session_t0);
        sync_from_device();
        save_checkpoint(opt_.run_dir, model_.layout(), params_, adam_, state_);
      }
    }
  } catch (...) {
    // The first failure is what the user needs (e.g. the checkpoint's "File too large"): a
    // second one while marking the run failed (the same full disk) must not replace it.
    try {
      write_run_json("failed");
    } catch (const std::exception&) {
    }
    throw;
  }
  sync_from_device();  // params() reflects the device's weights after a run
  if (state_.step == steps) {
    write_run_json("finished");
    if (std::FILE* out = opt_.result ? opt_.result : opt_.progress)
      std::fprintf(
          out, "finished: %lld steps, %s tokens in %s%s\n", static_cast<long long>(steps),
          format_count(static_cast<double>(state_.tokens)).c_str(),
          format_duration(state_.elapsed_s).c_str(),
          last_eval_.windows ? ("; val loss " + std::to_string(last_eval_.loss)).c_str() : "");
  }
}

}  // namespace moba::train
