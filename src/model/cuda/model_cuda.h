// The decoder of model/model.h on the GPU, in bf16 mixed precision (docs/trainer_gpu.md):
// fp32 master weights, fp32 gradients and AdamW moments; a bf16 copy of the weights that
// the forward reads (rewritten by every AdamW step); bf16 activations and activation
// gradients; matmuls through cuBLASLt (matmul.h), our attention kernels
// (attention/cuda/attention_cuda.h), the layer kernels of layers_cuda.h. The parameter,
// gradient and moment arrays use the CPU model's flat ParamLayout, so checkpoints are the
// CPU trainer's files.
//
// Work is enqueued on the model's stream; the calls that return host values (take_losses,
// grad_norm, download) wait for it.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "model/batch.h"
#include "model/config.h"
#include "model/params.h"

namespace moba::dist {
class Communicator;
}

namespace moba::model::cuda {

using bf16 = __nv_bfloat16;

struct AdamWStep {
  int64_t t = 1;  // step number after this update
  double lr = 0.0, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
  float grad_scale = 1.0f;  // clipping's factor, applied to each gradient first
};

// Dense bf16 tensor-core peak FLOP/s of device 0, for MFU: 989e12 on an H100 or H200 (SXM;
// PEERS.md's figure), 0 when the device is not one we know the peak of.
double device_peak_bf16_flops();

// Throws moba::Error naming the first limit of the GPU model that cfg exceeds (listed at
// ModelCuda's constructor); checks no device.
void check_gpu_config(const ModelConfig& cfg);

class ModelCuda {
 public:
  // Throws moba::Error when the GPU kernels cannot run this configuration
  // (model::cuda_kernel_limits, which CPU-only builds know too: head dims 64 and 128, MoBA
  // block sizes powers of two >= 64, top_k <= 16, widths multiples of 8) or no device is
  // there. `cfg` must be valid (ModelConfig::validate).
  explicit ModelCuda(const ModelConfig& cfg);
  ~ModelCuda();
  ModelCuda(const ModelCuda&) = delete;
  ModelCuda& operator=(const ModelCuda&) = delete;

  const ModelConfig& config() const;
  const ParamLayout& layout() const;

  // Host <-> device copies of the fp32 arrays (layout().total elements each). Uploading the
  // parameters also writes their bf16 copy.
  void upload_params(std::span<const float> params);
  void download_params(std::span<float> params) const;
  void download_grads(std::span<float> grads) const;
  void upload_moments(std::span<const float> m, std::span<const float> v);
  void download_moments(std::span<float> m, std::span<float> v) const;

  void zero_grads();
  // One micro-batch, forward and backward: grads += loss_scale * d(mean loss)/d(params).
  // The mean loss (over the batch's counted positions, model.h's definition) is queued for
  // take_losses(). A mask with no 1 and tokens outside the vocabulary are moba::Error.
  void train_micro_batch(const Batch& batch, bool moba_phase, double loss_scale);
  // Forward only (validation): queues the mean loss and keeps the per-token losses.
  void forward(const Batch& batch, bool moba_phase);
  // Waits, then returns the mean losses of the micro-batches run since the last call, in
  // order (NaN or inf where the forward produced one).
  std::vector<double> take_losses();
  // Waits, then returns the per-token losses (B*T, nats) of the last forward or micro-batch:
  // every position, except that positions the batch's loss_mask drops read 0 (the CPU
  // model's token_losses() keeps their loss; validation windows carry no mask).
  std::vector<float> token_losses();
  // Global L2 norm of the gradients (a deterministic reduction in double); NaN or inf when
  // an element is not finite. Waits.
  double grad_norm();
  // AdamW over all parameters (decay per model/params.h), then the bf16 copy.
  void adamw_step(const AdamWStep& s);
  // FLOPs of the last micro-batch's forward + backward, executed (matmuls + attended pairs),
  // as Model::last_flops counts them.
  double last_flops() const;
  // The MoBA selection layer `layer` used in the last forward, (B*T, Hq, K) int32, as
  // attn::Selection::blocks; empty when that layer ran full attention. Waits.
  std::vector<int32_t> selection(int64_t layer) const;
  // Profiling: while on, every operation is followed by a CUDA event (a little slower);
  // take_profile() waits and returns milliseconds per category (matmuls, attention, MoBA
  // gate, layer kernels, optimizer, other) since the last call, then clears them.
  void set_profiling(bool on);
  std::vector<std::pair<std::string, double>> take_profile();
  // The same intervals by operation (summed over layers; "fwd matmul qkv", "bwd rmsnorm
  // (mlp)", ...), largest first, since the last call; then clears them (take_profile and
  // take_op_profile each clear only their own sums).
  struct OpProfile {
    std::string op, category;
    double ms = 0.0;
    int64_t count = 0;  // intervals summed (layers x steps)
  };
  std::vector<OpProfile> take_op_profile();
  // Device memory this model holds now (parameters, state, activations, scratch), bytes.
  size_t device_bytes() const;

  // Context parallel (docs/distributed.md, "The GPU model"): with a group `comm` of R > 1
  // ranks (null, or one rank: off, the plain model), one sequence of T = R x T_r tokens is
  // split over them, rank r holding positions [r T_r, (r + 1) T_r), as the CPU model's
  // Model::set_context_parallel:
  //  - forward() and train_micro_batch() take a Batch of one row, this rank's shard (T_r
  //    inputs and targets, its part of the loss mask, one document); RoPE at the global
  //    positions r T_r + t; every layer that runs must run MoBA (full layers need ring
  //    attention, which the GPU model does not have yet: an error naming the layer);
  //  - MoBA layers fetch the blocks their queries select from the earlier ranks
  //    (dist/context_parallel_cuda.h) and send the gradients back in the backward;
  //  - the loss is over ALL ranks' counted positions: the backward scales by 1 / (all
  //    ranks' counted positions), so that the SUM over the ranks of their gradients is the
  //    whole sequence's (the caller sums device_grads() over the group, without 1 / R), and
  //    take_losses() returns the global mean on every rank (it all-reduces, so it is
  //    collective too); token_losses() is this rank's T_r; last_flops() this rank's part;
  //  - forward, train_micro_batch and take_losses are collective: every rank calls them in
  //    the same order. Bad inputs throw moba::Error on every rank alike (a header is
  //    all-gathered first): B != 1, packed documents, shards of different lengths or not of
  //    whole blocks, the whole sequence longer than model.seq_len, no counted position.
  // `comm` takes device memory (dist::NcclCommunicator on this GPU, or a
  // dist::HostStagedCommunicator); not owned, it must outlive its use.
  void set_context_parallel(dist::Communicator* comm);
  dist::Communicator* context_parallel() const;

  // Data parallel (train/data_parallel_cuda.h): while set, the backward calls
  // hook(first, stream) each time the gradient elements at flat offsets >= first (the layout's
  // order) have all been enqueued for the last time: after the LM head and the final norm
  // (first = final_norm), after each layer from the last (first = that layer's attn_norm),
  // and at the end (first = 0; the embedding, tied LM head included). The work is enqueued
  // on `stream`, not done: the hook records an event there to wait for it. Empty: no calls.
  using GradReadyHook = std::function<void(size_t first, cudaStream_t stream)>;
  void set_grad_ready_hook(GradReadyHook hook);
  cudaStream_t stream() const;  // where this model's work is enqueued
  float* device_grads();        // the fp32 gradients, layout().total elements, on the device

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moba::model::cuda
