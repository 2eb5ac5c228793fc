#include "infer/plan.h"

#include <cstdio>

#include "attention/fwd_chunks.h"
#include "core/error.h"

namespace moba::infer {
namespace {

struct Terms {
  double cache_per_token = 0, layer_per_token = 0, weights = 0, logits_per_seq = 0, fixed = 0;
  // MoBA's chunked forward (cuda): of layer_per_token, the bytes per token of the partials
  // and their lse, held for at most `chunk` tokens (0: every token). The gather index is
  // the whole batch's either way (attention/fwd_chunks.h, v18).
  double chunked_per_token = 0;
  int64_t chunk = 0;
  // One layer's intermediates for n prefilled tokens.
  double layer(double n) const {
    const double c = static_cast<double>(chunk);
    return n * layer_per_token - (chunk > 0 && n > c ? (n - c) * chunked_per_token : 0.0);
  }
  // Bytes of B sequences of T tokens, prefilled T at a time.
  double total(int64_t B, int64_t T, int64_t prompt) const {
    const double b = static_cast<double>(B);
    const double prefill = std::max(layer(b * static_cast<double>(prompt)), b * logits_per_seq);
    return weights + fixed + b * static_cast<double>(T) * cache_per_token + prefill;
  }
};

std::string bytes(double b) {
  char buf[48];
  if (b >= 1024.0 * 1024 * 1024)
    std::snprintf(buf, sizeof buf, "%.2f GiB", b / (1024.0 * 1024 * 1024));
  else if (b >= 1024.0 * 1024)
    std::snprintf(buf, sizeof buf, "%.2f MiB", b / (1024.0 * 1024));
  else if (b >= 1024.0)
    std::snprintf(buf, sizeof buf, "%.2f KiB", b / 1024.0);
  else
    std::snprintf(buf, sizeof buf, "%.0f B", b);
  return buf;
}

}  // namespace

Plan plan_inference(const PlanInput& in) {
  const model::ModelConfig m = in.model.resolved();
  m.validate();
  MOBA_CHECK(in.device == "cpu" || in.device == "cuda", "--device must be cpu or cuda, got '",
             in.device, "'");
  MOBA_CHECK(in.memory_bytes >= 0, "the memory to plan for must be >= 0 bytes, got ",
             in.memory_bytes);
  MOBA_CHECK(in.weight_bytes_per_param >= 0, "bytes per parameter must be >= 0, got ",
             in.weight_bytes_per_param);
  Plan p;
  p.device = in.device;
  p.batch = in.batch;
  p.seq_len = m.seq_len;
  p.context = in.context > 0 ? in.context : m.seq_len;
  p.prompt = in.prompt > 0 ? in.prompt : p.context;
  MOBA_CHECK(p.batch >= 1, "the batch must be >= 1, got ", p.batch);
  MOBA_CHECK(p.prompt <= p.context, "a prompt of ", p.prompt, " tokens does not fit a context of ",
             p.context);
  const bool cuda = in.device == "cuda";
  p.elem_bytes = cuda ? 2 : 4;
  const double e = static_cast<double>(p.elem_bytes);
  const double L = static_cast<double>(m.layers), C = static_cast<double>(m.width),
               Hq = static_cast<double>(m.heads), Hkv = static_cast<double>(m.kv()),
               D = static_cast<double>(m.hd()), F = static_cast<double>(m.ffn()),
               V = static_cast<double>(m.vocab_size), S = static_cast<double>(m.attention.block_size);
  const bool moba = m.attention.kind == model::AttentionKind::moba;

  Terms t;
  t.cache_per_token = L * (2.0 * Hkv * D * e + 4.0 * Hkv * D / S);
  const double sel = moba ? 4.0 * Hq * static_cast<double>(m.attention.top_k) : 0.0;
  // MoBA's attention scratch on the GPU, which the decoder keeps between prefills: the
  // past blocks' fp32 partial outputs and lse and the gather entries, (N, Hq, K-1) each,
  // and the block means' three bf16 terms (attention/cuda/internal.h's scratch slots).
  const double kp = static_cast<double>(m.attention.top_k - 1);
  const double moba_scratch = moba ? Hq * kp * (4.0 * D + 8.0) + 6.0 * Hkv * D / S : 0.0;
  if (cuda && moba) {
    attn::Options ao;
    ao.fwd_chunk_tokens = in.fwd_chunk;
    t.chunk = attn::fwd_chunk_tokens(ao);  // what the decoder's attention plans read
    t.chunked_per_token = Hq * kp * (4.0 * D + 4.0);
  }
  p.fwd_chunk = t.chunk;
  if (cuda)  // model/cuda/decoder_cuda.cpp's buffers: x, x_mid, xn; the fused projections'
             // rows; q, o; k, v; h; lse, rstd; the selection; token ids and positions
    t.layer_per_token = e * (3 * C + std::max(Hq * D + 2 * Hkv * D, 2 * F) + 2 * Hq * D +
                             2 * Hkv * D + F) +
                        4.0 * (Hq + 1) + sel + 8.0 + moba_scratch;
  else
    t.layer_per_token = e * (2 * C + 2 * Hq * D + 2 * Hkv * D + 3 * F) + 4.0 * (Hq + 2) + sel;
  p.params = model::param_counts(m).total;
  p.weight_bytes_per_param =
      in.weight_bytes_per_param > 0 ? in.weight_bytes_per_param : (cuda ? 6.0 : 4.0);
  t.weights = static_cast<double>(p.params) * p.weight_bytes_per_param;
  t.logits_per_seq = 4.0 * V;
  t.fixed = cuda ? 32.0 * 1024 * 1024 : 0.0;

  p.cache_bytes_per_token = t.cache_per_token;
  p.cache_bytes = static_cast<double>(p.batch) * static_cast<double>(p.context) * t.cache_per_token;
  p.weight_bytes = t.weights;
  p.layer_bytes_per_token = t.layer_per_token;
  p.prefill_layer_bytes = t.layer(static_cast<double>(p.batch) * static_cast<double>(p.prompt));
  p.logits_bytes = static_cast<double>(p.batch) * t.logits_per_seq;
  p.prefill_bytes = std::max(p.prefill_layer_bytes, p.logits_bytes);
  p.fixed_bytes = t.fixed;
  p.total_bytes = t.total(p.batch, p.context, p.prompt);
  p.memory_bytes = in.memory_bytes;
  if (in.memory_bytes > 0) {
    // total(T) grows with T: the largest T within the memory, by bisection.
    int64_t lo = 0, hi = int64_t{1} << 40;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo + 1) / 2;
      if (t.total(p.batch, mid, mid) <= in.memory_bytes)
        lo = mid;
      else
        hi = mid - 1;
    }
    p.max_context = lo;
  }
  return p;
}

std::string plan_markdown(const Plan& p) {
  std::string s;
  char line[256];
  std::snprintf(line, sizeof line,
                "Inference memory, %s (%s), batch %lld, context %lld, prompt %lld:\n\n",
                p.device.c_str(), p.elem_bytes == 2 ? "bf16" : "float32",
                static_cast<long long>(p.batch), static_cast<long long>(p.context),
                static_cast<long long>(p.prompt));
  s += line;
  s += "| term | size | how |\n|---|---:|---|\n";
  const auto row = [&](const char* term, double b, const std::string& how) {
    std::snprintf(line, sizeof line, "| %s | %s | %s |\n", term, bytes(b).c_str(), how.c_str());
    s += line;
  };
  char how[224];
  std::snprintf(how, sizeof how, "%.0f B per cached token (K, V, block means) x %lld x %lld",
                p.cache_bytes_per_token, static_cast<long long>(p.batch),
                static_cast<long long>(p.context));
  row("KV cache", p.cache_bytes, how);
  std::snprintf(how, sizeof how, "%lld parameters x %g B", static_cast<long long>(p.params),
                p.weight_bytes_per_param);
  row("weights", p.weight_bytes, how);
  if (p.fwd_chunk > 0)
    std::snprintf(how, sizeof how,
                  "max(one layer: %.0f B x %lld tokens, MoBA's partials for %lld at a time; "
                  "logits %s)",
                  p.layer_bytes_per_token, static_cast<long long>(p.batch * p.prompt),
                  static_cast<long long>(p.fwd_chunk), bytes(p.logits_bytes).c_str());
  else
    std::snprintf(how, sizeof how, "max(one layer: %.0f B x %lld tokens, logits %s)",
                  p.layer_bytes_per_token, static_cast<long long>(p.batch * p.prompt),
                  bytes(p.logits_bytes).c_str());
  row("prefill", p.prefill_bytes, how);
  if (p.fixed_bytes > 0) row("workspace", p.fixed_bytes, "cuBLASLt");
  row("**total**", p.total_bytes, "");
  if (p.max_context >= 0) {
    std::snprintf(line, sizeof line,
                  "\nLongest context in %s at batch %lld: %lld tokens (the model trained at %lld)\n",
                  bytes(p.memory_bytes).c_str(), static_cast<long long>(p.batch),
                  static_cast<long long>(p.max_context), static_cast<long long>(p.seq_len));
    s += line;
  }
  return s;
}

}  // namespace moba::infer
