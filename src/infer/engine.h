// Inference over a trained model: prefill a batch of prompts into per-layer KV caches
// (attention/decode.h), then decode one token per sequence per step. The attention is
// training's: MoBA layers gate over the cache's block means, full layers (the hybrid's
// last layers, or every layer after a MoBA-to-full switch) attend the whole cache, so that
// prefill + decode gives the logits of one full-sequence forward of the same tokens.
//
// Engines: the CPU model in float or double (infer/engine_cpu.cpp) and the GPU model in
// bf16 (infer/engine_cuda.cpp, CUDA builds only). make_engine picks one.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "model/config.h"

namespace moba::infer {

struct EngineOptions {
  std::string device = "cpu";  // cpu (float32), cpu64 (float64, tests), cuda (bf16)
  int64_t batch = 1;           // sequences decoded together
  int64_t capacity = 0;        // tokens per sequence the cache holds; 0 = model.seq_len
  // Attention of MoBA layers: true runs MoBA (the checkpoint's last training step did),
  // false runs full attention in every layer (after a MoBA-to-full switch).
  bool moba = true;
};

class Engine {
 public:
  virtual ~Engine() = default;
  virtual const model::ModelConfig& config() const = 0;
  virtual int64_t batch() const = 0;
  virtual int64_t capacity() const = 0;
  // Tokens in sequence b's cache.
  virtual int64_t length(int64_t b) const = 0;

  // Starts every sequence anew with prompts[b] (B prompts, each 1..capacity tokens, ids
  // < vocab_size; moba::Error naming the problem otherwise) and returns the logits of
  // each prompt's last token: (B, V), float.
  virtual std::vector<float> prefill(const std::vector<std::vector<int32_t>>& prompts) = 0;
  // Appends tokens[b] to sequence b (B tokens) and returns the logits of the new tokens:
  // (B, V). A sequence already at capacity is a moba::Error naming it.
  virtual std::vector<float> decode(std::span<const int32_t> tokens) = 0;

  // Bytes the engine holds for its caches (all layers, all sequences, at capacity).
  virtual size_t cache_bytes() const = 0;

  // The logits the last prefill or decode returned, (B, V), before their rounding to float:
  // what the cpu64 engine computed in double (its tests compare to 1e-10). Empty for an
  // engine that does not keep them (the GPU's bf16 engine has nothing finer to give).
  std::span<const double> last_logits() const { return last_logits_; }

 protected:
  std::vector<double> last_logits_;
};

// params: the flat parameter array of model/params.h (layout of `cfg`), float32.
// Throws moba::Error for an unknown device, a CUDA device in a build without CUDA, or a
// configuration the device cannot run.
std::unique_ptr<Engine> make_engine(const model::ModelConfig& cfg, std::span<const float> params,
                                    const EngineOptions& opt);

}  // namespace moba::infer
