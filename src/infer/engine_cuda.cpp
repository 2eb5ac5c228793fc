// The GPU engine: infer/engine.h over model/cuda/decoder_cuda.h (bf16, the decode kernels).
#include <memory>

#include "infer/engine.h"
#include "model/cuda/decoder_cuda.h"

namespace moba::infer {
namespace {

class CudaEngine final : public Engine {
 public:
  CudaEngine(const model::ModelConfig& cfg, std::span<const float> params, const EngineOptions& o)
      : dec_(cfg, params, o.batch, o.capacity > 0 ? o.capacity : cfg.resolved().seq_len,
             o.moba) {}
  const model::ModelConfig& config() const override { return dec_.config(); }
  int64_t batch() const override { return dec_.batch(); }
  int64_t capacity() const override { return dec_.capacity(); }
  int64_t length(int64_t b) const override { return dec_.length(b); }
  std::vector<float> prefill(const std::vector<std::vector<int32_t>>& prompts) override {
    return dec_.prefill(prompts);
  }
  std::vector<float> decode(std::span<const int32_t> tokens) override {
    return dec_.decode(tokens);
  }
  size_t cache_bytes() const override { return dec_.cache_bytes(); }

 private:
  model::cuda::DecoderCuda dec_;
};

}  // namespace

std::unique_ptr<Engine> make_cuda_engine(const model::ModelConfig& cfg,
                                         std::span<const float> params, const EngineOptions& opt) {
  return std::make_unique<CudaEngine>(cfg, params, opt);
}

}  // namespace moba::infer
