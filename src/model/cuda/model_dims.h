// What the GPU model (model_cuda.cpp) and the GPU decoder (decoder_cuda.cpp) set up alike:
// the sizes they read off the config, and the stream they enqueue on. Not part of the API.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "attention/layout.h"
#include "core/cuda_check.cuh"
#include "core/error.h"
#include "model/config.h"

namespace moba::model::cuda {

struct ModelDims {
  int64_t C = 0, Hq = 0, Hkv = 0, D = 0, F = 0, V = 0, L = 0;
  int64_t QKV = 0;  // (Hq + 2 Hkv) D: the fused QKV projection's width
  attn::MobaConfig moba;

  // cfg resolved (ModelConfig::resolved) and valid.
  void set_dims(const ModelConfig& cfg) {
    C = cfg.width;
    Hq = cfg.heads;
    Hkv = cfg.kv();
    D = cfg.hd();
    F = cfg.ffn();
    V = cfg.vocab_size;
    L = cfg.layers;
    QKV = (Hq + 2 * Hkv) * D;
    moba = {cfg.attention.block_size, cfg.attention.top_k};
  }
};

// A new stream; moba::Error naming the cause when there is no CUDA device.
inline cudaStream_t create_stream_on_device() {
  int devices = 0;
  const cudaError_t e = cudaGetDeviceCount(&devices);
  MOBA_CHECK(e == cudaSuccess && devices > 0, "--device cuda: no CUDA device (",
             e == cudaSuccess ? "none found" : cudaGetErrorString(e), ")");
  cudaStream_t stream = nullptr;
  CUDA_CHECK(cudaStreamCreate(&stream));
  return stream;
}

}  // namespace moba::model::cuda
