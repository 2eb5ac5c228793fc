// The decoder of model/model.h on the GPU for inference (infer/engine.h's CUDA engine):
// bf16 weights and activations, fp32 norms and logits; prefill through the training
// kernels (MoBA gate + forward, or dense flash attention) over the packed prompts, which
// fills a bf16 KV cache per layer (attention/cuda/decode_cuda.h, with its fp32 block means);
// then one token per sequence per step through the decode kernels. The attention is
// training's, so prefill + decode follows the full-sequence forward.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "model/config.h"

namespace moba::model::cuda {

class DecoderCuda {
 public:
  // params: the flat fp32 array of model/params.h. capacity: tokens per sequence (RoPE
  // positions up to capacity - 1). moba: MoBA layers run MoBA (false: every layer full, as
  // after a MoBA-to-full switch). moba::Error when the GPU cannot run the configuration
  // (ModelCuda's limits), no device is there, or the caches do not fit.
  DecoderCuda(const ModelConfig& cfg, std::span<const float> params, int64_t batch,
              int64_t capacity, bool moba);
  ~DecoderCuda();
  DecoderCuda(const DecoderCuda&) = delete;
  DecoderCuda& operator=(const DecoderCuda&) = delete;

  const ModelConfig& config() const;
  int64_t batch() const;
  int64_t capacity() const;
  int64_t length(int64_t b) const;

  // B prompts, each 1..capacity tokens in [0, V): the logits (B, V) of each last token.
  std::vector<float> prefill(const std::vector<std::vector<int32_t>>& prompts);
  // One token per sequence (B): the logits (B, V) of the new tokens.
  std::vector<float> decode(std::span<const int32_t> tokens);
  // The same step without reading the logits back (benchmarks: the logits stay on the
  // device; the call returns once the work is queued).
  void decode_async(std::span<const int32_t> tokens);
  void synchronize();

  // Tests: while on, the MoBA selection of every position is kept on the host, per
  // sequence and layer: selections(b)[l] holds (positions since the last prefill, Hq, K)
  // int32 as attn::Selection::blocks (prefill rows from the training gate, then one row per
  // decode step from the decode gate); empty for layers running full attention. A prefill
  // starts them anew. Costs a device-to-host copy per layer and step.
  void record_selections(bool on);
  const std::vector<std::vector<int32_t>>& selections(int64_t b) const;

  size_t cache_bytes() const;   // KV caches and block means, all layers
  size_t device_bytes() const;  // everything this decoder holds on the device now

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moba::model::cuda
