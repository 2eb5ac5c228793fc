// The inference memory planner against numbers worked out by hand for a small MoBA model.
#include "infer/plan.h"

#include <gtest/gtest.h>

#include <string>

#include "core/error.h"

namespace moba::infer {
namespace {

// V 256, C 64, L 2, Hq 4, Hkv 2, D 16, F 176, S 8, K 2, T 128, tied embeddings.
// Parameters: embedding 256 x 64 = 16384; per layer 2 norms (128), wq and wo (2 x 4096),
// wk and wv (2 x 2048), gate, up and down (3 x 11264) = 46208; final norm 64:
// 16384 + 2 x 46208 + 64 = 108864.
model::ModelConfig small() {
  model::ModelConfig m;
  m.vocab_size = 256;
  m.width = 64;
  m.layers = 2;
  m.heads = 4;
  m.kv_heads = 2;
  m.mlp_hidden = 176;
  m.seq_len = 128;
  m.attention.kind = model::AttentionKind::moba;
  m.attention.block_size = 8;
  m.attention.top_k = 2;
  return m;
}

TEST(InferencePlan, CpuFloatByHand) {
  const Plan p = plan_inference({.model = small(), .device = "cpu", .batch = 2, .context = 100,
                                 .prompt = 64, .memory_bytes = 1e6});
  EXPECT_EQ(p.params, 108864);
  EXPECT_EQ(p.elem_bytes, 4);
  // Per token: 2 layers x (K and V: 2 x 2 x 16 x 4 = 256, block means 4 x 2 x 16 / 8 = 16).
  EXPECT_DOUBLE_EQ(p.cache_bytes_per_token, 544);
  EXPECT_DOUBLE_EQ(p.cache_bytes, 2 * 100 * 544);
  EXPECT_DOUBLE_EQ(p.weight_bytes, 108864 * 4);
  // One layer per token: 4 x (2 x 64 + 2 x 64 + 2 x 32 + 3 x 176) + 4 x (4 + 2) + 4 x 4 x 2.
  EXPECT_DOUBLE_EQ(p.layer_bytes_per_token, 3448);
  EXPECT_DOUBLE_EQ(p.prefill_layer_bytes, 2 * 64 * 3448);
  EXPECT_DOUBLE_EQ(p.logits_bytes, 2 * 256 * 4);
  EXPECT_DOUBLE_EQ(p.prefill_bytes, 441344);
  EXPECT_DOUBLE_EQ(p.fixed_bytes, 0);
  EXPECT_DOUBLE_EQ(p.total_bytes, 435456 + 108800 + 441344);
  // 1e6 bytes: 435456 + T x (2 x 544 + 2 x 3448) <= 1e6 -> T <= 70.7.
  EXPECT_EQ(p.max_context, 70);
  const std::string md = plan_markdown(p);
  EXPECT_NE(md.find("| KV cache | 106.25 KiB |"), std::string::npos) << md;
  EXPECT_NE(md.find("| **total** |"), std::string::npos) << md;
  EXPECT_NE(md.find("Longest context in 976.56 KiB at batch 2: 70 tokens (the model trained at 128)"),
            std::string::npos) << md;
}

// The chunked MoBA forward (attention/fwd_chunks.h): the partials and their lse (272 B per
// token here: Hq 4 x (K-1) 1 x (4 D + 4), D 16) are held for one chunk of the prefill
// only; the gather entries (16 B per token) for the whole batch (one index for all chunks).
TEST(InferencePlan, CudaMobaChunkedForwardHoldsOneChunksPartials) {
  const PlanInput one{.model = small(), .device = "cuda", .context = 1024, .prompt = 1024,
                      .fwd_chunk = 0};
  const Plan p0 = plan_inference(one);
  EXPECT_EQ(p0.fwd_chunk, 0);
  EXPECT_DOUBLE_EQ(p0.prefill_layer_bytes, 1024.0 * 2196);
  PlanInput chunked = one;
  chunked.fwd_chunk = 256;
  const Plan p1 = plan_inference(chunked);
  EXPECT_EQ(p1.fwd_chunk, 256);
  EXPECT_DOUBLE_EQ(p1.layer_bytes_per_token, p0.layer_bytes_per_token);
  EXPECT_DOUBLE_EQ(p1.prefill_layer_bytes, 1024.0 * 2196 - (1024 - 256) * 272.0);
  EXPECT_DOUBLE_EQ(p0.total_bytes - p1.total_bytes, (1024 - 256) * 272.0);
  EXPECT_NE(plan_markdown(p1).find("MoBA's partials for 256 at a time"), std::string::npos);
  // A prompt within one chunk: as unchunked. The CPU engine has no such scratch.
  chunked.prompt = 200;
  EXPECT_DOUBLE_EQ(plan_inference(chunked).prefill_layer_bytes, 200.0 * 2196);
  chunked.device = "cpu";
  EXPECT_EQ(plan_inference(chunked).fwd_chunk, 0);
}

TEST(InferencePlan, CudaBf16ByHand) {
  const Plan p = plan_inference({.model = small(), .device = "cuda"});
  EXPECT_EQ(p.context, 128);  // model.seq_len
  EXPECT_EQ(p.prompt, 128);
  EXPECT_EQ(p.elem_bytes, 2);
  EXPECT_DOUBLE_EQ(p.cache_bytes_per_token, 2 * (2 * 2 * 16 * 2 + 16));
  // fp32 parameters and their bf16 copy (model/cuda/decoder_cuda.cpp).
  EXPECT_DOUBLE_EQ(p.weight_bytes, 108864.0 * 6);
  // The decoder's buffers per token: 2 x (3 x 64 + max(128, 352) + 2 x 64 + 2 x 32 + 176)
  // + lse and rstd 4 x (4 + 1) + the selection 4 x 4 x 2 + ids and positions 8, + MoBA's
  // attention scratch: Hq (K-1) = 4 partial outputs of 16 floats with their lse and gather
  // entry, 4 x (4 x 16 + 8) = 288, and the means' three bf16 terms 6 x 2 x 16 / 8 = 24.
  EXPECT_DOUBLE_EQ(p.layer_bytes_per_token, 2 * 912 + 20 + 32 + 8 + 288 + 24);
  EXPECT_DOUBLE_EQ(p.fixed_bytes, 32 << 20);
  EXPECT_DOUBLE_EQ(p.total_bytes, 653184 + 128 * 288 + 128 * 2196 + 33554432);
  EXPECT_EQ(p.max_context, -1);
  // The bf16 weights alone; a one-token prompt's layer (2196 B) outweighs 256 logits, and
  // 4096 logits (16 KiB) outweigh it.
  const Plan q = plan_inference({.model = small(), .device = "cuda", .context = 16, .prompt = 1,
                                 .weight_bytes_per_param = 2});
  EXPECT_DOUBLE_EQ(q.weight_bytes, 108864.0 * 2);
  EXPECT_DOUBLE_EQ(q.prefill_bytes, 2196);
  model::ModelConfig big_vocab = small();
  big_vocab.vocab_size = 4096;
  EXPECT_DOUBLE_EQ(plan_inference({.model = big_vocab, .device = "cuda", .context = 16, .prompt = 1})
                       .prefill_bytes,
                   4096 * 4);
  // Full attention: no selection in the layer's intermediates, no MoBA scratch.
  model::ModelConfig f = small();
  f.attention.kind = model::AttentionKind::full;
  EXPECT_DOUBLE_EQ(plan_inference({.model = f}).layer_bytes_per_token, 3448 - 32);
  EXPECT_DOUBLE_EQ(plan_inference({.model = f, .device = "cuda"}).layer_bytes_per_token,
                   2 * 912 + 20 + 8);
}

TEST(InferencePlan, MemoryTooSmallForTheWeightsFitsNothing) {
  const Plan p = plan_inference({.model = small(), .memory_bytes = 1000});
  EXPECT_EQ(p.max_context, 0);
}

TEST(InferencePlan, BadInputIsNamed) {
  const auto message = [](const PlanInput& in) {
    try {
      plan_inference(in);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(message({.model = small(), .device = "tpu"}).find("--device must be cpu or cuda"),
            std::string::npos);
  EXPECT_NE(message({.model = small(), .batch = 0}).find("batch must be >= 1"), std::string::npos);
  EXPECT_NE(message({.model = small(), .context = 10, .prompt = 20})
                .find("a prompt of 20 tokens does not fit a context of 10"),
            std::string::npos);
  EXPECT_NE(message({.model = small(), .memory_bytes = -1}).find("memory"), std::string::npos);
}

}  // namespace
}  // namespace moba::infer
