// The GPU decoder (src/model/cuda/decoder_cuda.h) against the CPU model in fp64: prefill a
// prompt, then decode token by token; the logits at every position must be those of one
// full-sequence forward (docs/inference.md).
//
// Model: the tiny decoder of model_cuda_test (V 512, C 128, L 3, Hq 2, Hkv 1 or 2, D 64,
// F 512, MoBA S 64 K 3, the last layer full), bf16-exact weights (so the GPU's bf16 copy is
// the CPU's weights), T = 512 tokens per sequence: 8 blocks, so the gate chooses among up to
// 7 past blocks. Two sequences of different lengths decode together (prompts of 1 and 100
// tokens), so the batch's rows sit at different positions and blocks at every step.
//
// Bound. The reference is Model<double>::forward over the whole sequence (keep_logits),
// attending the selections the GPU made (its training gate for the prompt, its decode gate
// for every decoded position; DecoderCuda::record_selections): a bf16 gate may break a
// near-tie the other way than the fp64 one (model_cuda_test forces them the same way; the
// test prints how many slots differ). Error of a logits row: max |gpu - ref| / max |ref|. The yardstick is the GPU's own prefill of the
// same sequence cut at several lengths (its last row; the training kernels, whose error
// against the naive bf16 model model_cuda_test bounds): every decoded row must be within
// 2 x the largest prefill error + 2e-3. A wrong position, block mean, selection, cache row
// or GQA index gives errors of order 1.
//
// Skips (passes) without a CUDA device; the configuration checks run without one.
#include "model/cuda/decoder_cuda.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "attention/gate.h"
#include "core/error.h"
#include "model/batch.h"
#include "model/config.h"
#include "model/model.h"
#include "model/params.h"
#include "model_gpu/gpu_compare.h"

namespace moba::test {
namespace {

namespace mc = model::cuda;
using model::ModelConfig;

#define SKIP_WITHOUT_DEVICE() \
  if (!have_device()) GTEST_SKIP() << "no CUDA device: GPU decoder tests skipped"

constexpr int64_t kT = 512;

ModelConfig tiny_config(int64_t kv_heads, model::AttentionKind kind) {
  ModelConfig c;
  c.vocab_size = 512;
  c.width = 128;
  c.layers = 3;
  c.heads = 2;
  c.kv_heads = kv_heads;
  c.head_dim = 64;
  c.seq_len = kT;
  c.init_std = 0.1;  // scores and logits of order 1: attention far from uniform
  c.attention.kind = kind;
  c.attention.block_size = 64;
  c.attention.top_k = 3;
  c.attention.full_attention_last_layers = 1;
  return c.resolved();
}

std::vector<float> test_params(const model::ParamLayout& layout, uint64_t seed) {
  std::vector<float> P(layout.total);
  model::init_params<float>(layout, seed, P);
  std::mt19937_64 gen(seed + 17);
  std::normal_distribution<double> dist(0.0, 0.1);
  for (const model::TensorInfo& t : layout.tensors)
    if (t.init_std == 0.0)
      for (size_t i = 0; i < t.size; ++i) P[t.offset + i] = static_cast<float>(1.0 + dist(gen));
  return rounded(std::move(P));
}

std::vector<int32_t> random_tokens(int64_t n, int64_t V, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int32_t& x : t) x = static_cast<int32_t>(gen() % static_cast<uint64_t>(V));
  return t;
}

// Logits (n, V) of Model<double> over tokens[0, n), attending the GPU's MoBA selections
// (per layer (n, Hq, K), empty for full layers): a bf16 gate may break a near-tie between two
// blocks the other way than the fp64 one, and that is no error (model_cuda_test does the
// same). The rows that the fp64 gate would have chosen differently are counted in *flips.
std::vector<double> reference_logits(const ModelConfig& cfg, const std::vector<float>& P,
                                     const std::vector<int32_t>& tokens, int64_t n, bool moba,
                                     const std::vector<std::vector<int32_t>>& gpu_sel,
                                     int64_t* flips) {
  model::Model<double> m(cfg);
  m.keep_logits(true);
  model::Batch b;
  b.B = 1;
  b.T = n;
  b.tokens.assign(tokens.begin(), tokens.begin() + n);
  b.tokens.push_back(0);  // a target for the last position (its loss is not used)
  const std::vector<double> Pd(P.begin(), P.end());
  std::vector<std::vector<int32_t>> forced(gpu_sel.begin(), gpu_sel.end());
  const bool any = std::any_of(forced.begin(), forced.end(), [](const auto& x) { return !x.empty(); });
  if (any) m.force_selections(forced);
  m.forward(Pd, b, moba);
  if (any && flips)
    for (int64_t l = 0; l < cfg.layers; ++l)
      if (const attn::Selection* g = m.gate_selection(l))
        for (size_t i = 0; i < g->blocks.size(); ++i) *flips += g->blocks[i] != gpu_sel[l][i];
  return {m.logits().begin(), m.logits().end()};
}

double row_error(const float* gpu, const double* ref, int64_t V) {
  double err = 0.0, scale = 0.0;
  for (int64_t i = 0; i < V; ++i) {
    err = std::max(err, std::abs(static_cast<double>(gpu[i]) - ref[i]));
    scale = std::max(scale, std::abs(ref[i]));
  }
  return err / scale;
}

void check_decode_matches_forward(const ModelConfig& cfg, bool moba, uint64_t seed) {
  const model::ParamLayout layout = model::make_param_layout(cfg);
  const std::vector<float> P = test_params(layout, seed);
  const int64_t V = cfg.vocab_size;
  const std::vector<std::vector<int32_t>> seqs = {random_tokens(kT, V, seed + 1),
                                                  random_tokens(kT, V, seed + 2)};
  const std::vector<int64_t> prompt_len = {1, 100};

  mc::DecoderCuda dec(cfg, P, 2, kT, moba);
  dec.record_selections(true);
  int64_t flips = 0;
  // The yardstick: prefills of both sequences cut at block edges and inside blocks, each
  // against the forward attending that prefill's own selections.
  double prefill_err = 0.0;
  for (int64_t p : {1, 63, 64, 65, 130, 200, 321, 448, 511, 512}) {
    const std::vector<std::vector<int32_t>> prompts = {
        {seqs[0].begin(), seqs[0].begin() + p}, {seqs[1].begin(), seqs[1].begin() + p}};
    const std::vector<float> lg = dec.prefill(prompts);
    for (int64_t b = 0; b < 2; ++b) {
      const std::vector<double> ref =
          reference_logits(cfg, P, seqs[b], p, moba, dec.selections(b), &flips);
      prefill_err = std::max(prefill_err, row_error(&lg[b * V], &ref[(p - 1) * V], V));
    }
  }
  const double bound = 2.0 * prefill_err + 2e-3;

  // Prefill the two prompts, then decode the rest of the sequences token by token, keeping
  // every step's logits.
  const std::vector<std::vector<int32_t>> prompts = {
      {seqs[0].begin(), seqs[0].begin() + prompt_len[0]},
      {seqs[1].begin(), seqs[1].begin() + prompt_len[1]}};
  const int64_t steps = kT - prompt_len[1];
  std::vector<std::vector<float>> out = {dec.prefill(prompts)};
  for (int64_t step = 0; step < steps; ++step) {
    const std::vector<int32_t> next = {seqs[0][prompt_len[0] + step], seqs[1][prompt_len[1] + step]};
    out.push_back(dec.decode(next));
  }
  EXPECT_EQ(dec.length(0), prompt_len[0] + steps);
  EXPECT_EQ(dec.length(1), kT);
  double worst = 0.0;
  int64_t worst_pos = -1, over = 0, decode_flips = 0;
  for (int64_t b = 0; b < 2; ++b) {
    const int64_t n = prompt_len[b] + steps;  // positions the decoder has seen
    const std::vector<double> ref =
        reference_logits(cfg, P, seqs[b], n, moba, dec.selections(b), &decode_flips);
    for (int64_t step = 0; step <= steps; ++step) {
      const int64_t pos = prompt_len[b] - 1 + step;  // the position these logits are for
      const double e = row_error(&out[step][b * V], &ref[pos * V], V);
      if (e > worst) worst = e, worst_pos = pos;
      over += e > bound;
    }
  }
  std::printf("decode vs fp64 forward: worst row error %.3g at position %lld, prefill's %.3g, "
              "bound %.3g, %lld rows over; gate slots where fp64 would choose otherwise: %lld "
              "(prefills), %lld (decode)\n",
              worst, static_cast<long long>(worst_pos), prefill_err, bound,
              static_cast<long long>(over), static_cast<long long>(flips),
              static_cast<long long>(decode_flips));
  EXPECT_EQ(over, 0) << "decoded logits differ from the full-sequence forward";
  EXPECT_TRUE(std::isfinite(worst));
}

TEST(DecoderCuda, MobaHybridMatchesForwardGqa) {
  SKIP_WITHOUT_DEVICE();
  check_decode_matches_forward(tiny_config(1, model::AttentionKind::moba), true, 11);
}

TEST(DecoderCuda, MobaHybridMatchesForward) {
  SKIP_WITHOUT_DEVICE();
  check_decode_matches_forward(tiny_config(2, model::AttentionKind::moba), true, 12);
}

TEST(DecoderCuda, AfterMobaToFullSwitchMatchesForward) {
  SKIP_WITHOUT_DEVICE();
  check_decode_matches_forward(tiny_config(1, model::AttentionKind::moba), false, 13);
}

TEST(DecoderCuda, FullAttentionMatchesForward) {
  SKIP_WITHOUT_DEVICE();
  check_decode_matches_forward(tiny_config(2, model::AttentionKind::full), true, 14);
}

TEST(DecoderCuda, BadInputIsNamed) {
  ModelConfig bad = tiny_config(1, model::AttentionKind::moba);
  bad.head_dim = 32;
  bad.heads = 4;
  const std::vector<float> P0(model::make_param_layout(bad.resolved()).total);
  try {
    mc::DecoderCuda d(bad, P0, 1, 64, true);
    FAIL() << "head_dim 32 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("head_dim"), std::string::npos) << e.what();
  }
  SKIP_WITHOUT_DEVICE();
  const ModelConfig cfg = tiny_config(1, model::AttentionKind::moba);
  const std::vector<float> P = test_params(model::make_param_layout(cfg), 3);
  mc::DecoderCuda dec(cfg, P, 1, 70, true);
  auto expect_error = [](const char* what, auto&& f, const char* needle) {
    try {
      f();
      ADD_FAILURE() << what << ": no error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << what << ": " << e.what();
    }
  };
  expect_error("decode before prefill", [&] { dec.decode(std::vector<int32_t>{1}); }, "prefill");
  expect_error("empty prompt", [&] { dec.prefill({{}}); }, "empty");
  expect_error("long prompt", [&] { dec.prefill({std::vector<int32_t>(71, 1)}); }, "capacity");
  expect_error("token id", [&] { dec.prefill({{1, 512}}); }, "vocabulary");
  expect_error("batch", [&] { dec.prefill({{1}, {2}}); }, "batch");
  dec.prefill({std::vector<int32_t>(69, 1)});
  dec.decode(std::vector<int32_t>{2});
  expect_error("full cache", [&] { dec.decode(std::vector<int32_t>{2}); }, "full");
}

}  // namespace
}  // namespace moba::test
