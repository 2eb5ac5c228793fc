// The inference memory planner: what an engine (infer/engine.h) holds for a model, a
// batch and a context length, and the longest context that fits in a given memory.
// Printed by `moba generate --plan`. The terms, for L layers, Hq/Hkv heads of D, width C,
// MLP F, vocabulary V, block size S, element size e (4: cpu float32; 2: cuda bf16):
//
//   cache per token   L x (2 Hkv D e  +  4 Hkv D / S)        K and V; one fp32 block-mean
//                                                            row (Hkv, D) per S tokens
//   weights           params x bytes per parameter            cpu 4 (fp32); cuda 6: the
//                     GPU decoder (model/cuda/decoder_cuda.cpp) keeps the fp32 parameters
//                     (its norms read them) and the bf16 copy its matmuls read
//   prefill           max(one layer's intermediates for B x prompt tokens, logits B x V
//                     fp32); a layer's per token: cpu e x (2C + 2 Hq D + 2 Hkv D + 3F) + 4 x
//                     (Hq + 2); cuda (the decoder's buffers) e x (3C + max((Hq + 2 Hkv) D,
//                     2F) + 2 Hq D + 2 Hkv D + F) + 4 (Hq + 1) + 8; + 4 Hq K for the MoBA
//                     selection; cuda MoBA's attention scratch Hq (K-1) (4D + 8) (partials,
//                     lse, gather entries; for at most the forward's chunk of tokens where
//                     it runs chunked) + 6 Hkv D / S (block means)
//   fixed             cuda: the 32 MiB cuBLASLt workspace; cpu: 0
#pragma once

#include <cstdint>
#include <string>

#include "model/config.h"

namespace moba::infer {

struct PlanInput {
  model::ModelConfig model;        // resolved or not (resolved here)
  std::string device = "cpu";      // cpu (float32) or cuda (bf16)
  int64_t batch = 1;               // sequences decoded together
  int64_t context = 0;             // tokens per sequence the cache holds; 0 = model.seq_len
  int64_t prompt = 0;              // longest prompt prefilled in one call; 0 = context
  double memory_bytes = 0;         // > 0: also the longest context that fits in this
  double weight_bytes_per_param = 0;  // 0: the device's (cpu 4, cuda 6; see above)
  // cuda MoBA: the forward's query chunk (attention/fwd_chunks.h; tokens, 0 = one pass,
  // -1 = the environment's MOBA_FWD_CHUNK_TOKENS, which the decoder's plans read too).
  int64_t fwd_chunk = -1;
};

struct Plan {
  std::string device;
  int64_t batch = 0, context = 0, prompt = 0, seq_len = 0;
  int64_t elem_bytes = 0;            // of K, V and activations
  double cache_bytes_per_token = 0;  // one sequence, all layers
  double cache_bytes = 0;            // batch x context tokens
  int64_t params = 0;
  double weight_bytes_per_param = 0, weight_bytes = 0;
  double layer_bytes_per_token = 0;  // one layer's prefill intermediates per token
  double prefill_layer_bytes = 0;    // batch x prompt tokens of them (MoBA's partials and
                                     // their lse: of at most fwd_chunk tokens)
  int64_t fwd_chunk = 0;             // cuda MoBA's forward chunk, resolved (0: one pass)
  double logits_bytes = 0;           // batch x V fp32
  double prefill_bytes = 0;          // the larger of the two
  double fixed_bytes = 0;
  double total_bytes = 0;
  double memory_bytes = 0;   // as given (0: not asked)
  int64_t max_context = -1;  // longest context (prompt = context) within memory_bytes at
                             // this batch; 0 when nothing fits, -1 when not asked
};

// Throws moba::Error naming the bad input (an unknown device, batch, context or prompt < 1
// after defaults, a prompt longer than the context, negative memory).
Plan plan_inference(const PlanInput& in);

// The plan as a small Markdown table (one row per term, bytes in MiB/GiB), with the longest
// context that fits when memory was given.
std::string plan_markdown(const Plan& p);

}  // namespace moba::infer
