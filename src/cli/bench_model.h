// The decoder shape of the whole-model benchmarks (moba bench train, moba bench infer): its
// options, declared once, and the ModelConfig it makes. Defaults are PEERS.md's reference
// model: 12 layers, width 768, 12 heads, SwiGLU 2048, vocabulary 8192, untied, S 512, K 3.
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

#include "model/config.h"

namespace moba::cli {

struct BenchModelShape {
  int64_t layers = 12, width = 768, heads = 12, kv_heads = 0, head_dim = 0;
  int64_t mlp_hidden = 2048, vocab = 8192, block_size = 512, top_k = 3;
  bool tied = false;

  // T: the context; attention: "full" or "moba". Resolved and validated.
  model::ModelConfig config(int64_t T, const std::string& attention) const {
    model::ModelConfig c;
    c.vocab_size = vocab;
    c.width = width;
    c.layers = layers;
    c.heads = heads;
    c.kv_heads = kv_heads;
    c.head_dim = head_dim;
    c.mlp_hidden = mlp_hidden;
    c.seq_len = T;
    c.tied_embeddings = tied;
    c.attention.kind = attention == "moba" ? model::AttentionKind::moba : model::AttentionKind::full;
    c.attention.block_size = block_size;
    c.attention.top_k = top_k;
    c = c.resolved();
    c.validate();
    return c;
  }

  nlohmann::json json() const {
    return {{"layers", layers},         {"width", width},   {"heads", heads},
            {"kv_heads", kv_heads},     {"head_dim", head_dim}, {"mlp_hidden", mlp_hidden},
            {"vocab", vocab},           {"tied", tied},     {"block_size", block_size},
            {"top_k", top_k}};
  }

  void add_options(CLI::App* cmd) {
    cmd->add_option("--layers", layers, "Layers")->capture_default_str();
    cmd->add_option("--width", width, "Width C")->capture_default_str();
    cmd->add_option("--heads", heads, "Query heads")->capture_default_str();
    cmd->add_option("--kv-heads", kv_heads, "Key/value heads (0: = heads)")->capture_default_str();
    cmd->add_option("--head-dim", head_dim, "Head dim (0: width / heads)")->capture_default_str();
    cmd->add_option("--mlp-hidden", mlp_hidden, "SwiGLU hidden width (0: 8C/3 rounded)")
        ->capture_default_str();
    cmd->add_option("--vocab", vocab, "Vocabulary")->capture_default_str();
    cmd->add_option("--block-size,-S", block_size, "MoBA block size")->capture_default_str();
    cmd->add_option("--top-k,-K", top_k, "MoBA top-k")->capture_default_str();
    cmd->add_flag("--tied", tied, "Tie the LM head to the embedding (PEERS.md: untied)");
  }
};

}  // namespace moba::cli
