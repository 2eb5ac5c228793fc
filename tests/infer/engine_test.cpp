// The CPU engine against the training forward: prefill of a prefix then decode token by
// token gives, at every position, the logits Model<Real>::forward computes on the whole
// sequence (full, MoBA, hybrid and after a MoBA-to-full switch; float and double); a batch
// of prompts of different lengths equals each sequence alone; errors are named.
#include "infer/engine.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "attention/decode.h"
#include "core/error.h"
#include "model/model.h"
#include "model/params.h"

namespace moba::infer {
namespace {

using model::AttentionKind;
using model::ModelConfig;

ModelConfig tiny(AttentionKind kind, int64_t S, int64_t K) {
  ModelConfig c;
  c.vocab_size = 13;
  c.width = 16;
  c.layers = 2;
  c.heads = 4;
  c.kv_heads = 2;
  c.head_dim = 4;
  c.mlp_hidden = 24;
  c.seq_len = 40;
  c.init_std = 0.4;  // large weights: attention and the gate's choices matter to the logits
  c.attention.kind = kind;
  c.attention.block_size = S;
  c.attention.top_k = K;
  return c;
}

std::vector<float> random_params(const ModelConfig& cfg, uint64_t seed) {
  const model::ParamLayout lay = model::make_param_layout(cfg.resolved());
  std::vector<float> p(lay.total);
  model::init_params<float>(lay, seed, p);
  return p;
}

std::vector<int32_t> random_tokens(int64_t n, int64_t V, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = static_cast<int32_t>(gen() % static_cast<uint64_t>(V));
  return t;
}

// Model<Real>::forward's logits of one sequence: (n, V). `context` replaces model.seq_len
// (the parameters do not depend on it), for sequences past the training context.
template <typename Real>
std::vector<double> forward_logits(ModelConfig cfg, const std::vector<float>& params,
                                   const std::vector<int32_t>& seq, bool moba, int64_t context = 0) {
  if (context > 0) cfg.seq_len = context;
  model::Model<Real> m(cfg);
  m.keep_logits(true);
  const std::vector<Real> P(params.begin(), params.end());
  model::Batch batch;
  batch.B = 1;
  batch.T = static_cast<int64_t>(seq.size());
  batch.tokens = seq;
  batch.tokens.push_back(0);  // a target for the last position; its loss is not looked at
  m.forward(P, batch, moba);
  return std::vector<double>(m.logits().begin(), m.logits().end());
}

double scale_of(const std::vector<double>& logits) {
  double s = 0.0;
  for (double x : logits) s = std::max(s, std::abs(x));
  return s;
}

// got[got_off, +V) against row t of want (n, V), within tol times the logits' scale.
void expect_row(std::span<const double> got, size_t got_off, const std::vector<double>& want,
                int64_t t, int64_t V, double tol, const std::string& where) {
  const double scale = scale_of(want);
  ASSERT_GT(scale, 0.1) << where;  // logits of a real size, or the comparison says little
  for (int64_t i = 0; i < V; ++i)
    ASSERT_NEAR(got[got_off + i], want[t * V + i], tol * scale)
        << where << ", position " << t << ", logit " << i;
}

double tol_of(const std::string& device) { return device == "cpu" ? 1e-5 : 1e-10; }

// The engine's logits in double (last_logits), checked against the float ones it returned.
std::vector<double> logits_of(const Engine& e, const std::vector<float>& returned) {
  const std::span<const double> l = e.last_logits();
  EXPECT_EQ(l.size(), returned.size());
  for (size_t i = 0; i < std::min(l.size(), returned.size()); ++i)
    EXPECT_EQ(returned[i], static_cast<float>(l[i])) << "logit " << i;
  return std::vector<double>(l.begin(), l.end());
}

// Prefill `prefix` tokens, then decode the rest one by one: every row equals the forward.
void prefill_then_decode(const ModelConfig& cfg, const std::string& device, bool moba,
                         int64_t n, int64_t prefix, uint64_t seed, int64_t capacity = 0) {
  const std::vector<float> params = random_params(cfg, seed);
  const std::vector<int32_t> seq = random_tokens(n, cfg.vocab_size, seed + 1);
  const std::vector<double> want =
      device == "cpu" ? forward_logits<float>(cfg, params, seq, moba, capacity)
                      : forward_logits<double>(cfg, params, seq, moba, capacity);
  auto engine = make_engine(cfg, params, {device, 1, capacity, moba});
  const std::string where = device + (moba ? " moba" : " moba=false") + ", prefix " +
                            std::to_string(prefix);
  const int64_t V = cfg.vocab_size;
  const std::vector<double> first = logits_of(
      *engine, engine->prefill({std::vector<int32_t>(seq.begin(), seq.begin() + prefix)}));
  expect_row(first, 0, want, prefix - 1, V, tol_of(device), where + " (prefill)");
  for (int64_t t = prefix; t < n; ++t) {
    const std::vector<double> got =
        logits_of(*engine, engine->decode(std::span<const int32_t>(&seq[t], 1)));
    ASSERT_EQ(engine->length(0), t + 1);
    expect_row(got, 0, want, t, V, tol_of(device), where);
  }
}

struct Case {
  std::string name;
  ModelConfig cfg;
  bool moba = true;
};

std::vector<Case> cases() {
  std::vector<Case> v;
  v.push_back({"full", tiny(AttentionKind::full, 4, 2)});
  v.push_back({"moba S=4 K=2", tiny(AttentionKind::moba, 4, 2)});
  v.push_back({"moba S=5 K=3", tiny(AttentionKind::moba, 5, 3)});
  v.push_back({"moba S=8 K=2", tiny(AttentionKind::moba, 8, 2)});
  ModelConfig hybrid = tiny(AttentionKind::moba, 4, 3);
  hybrid.layers = 3;
  hybrid.attention.full_attention_last_layers = 1;
  v.push_back({"hybrid", hybrid});
  v.push_back({"moba=false", tiny(AttentionKind::moba, 4, 2), false});
  return v;
}

TEST(EngineCpu, PrefillThenDecodeEqualsForwardFloat) {
  uint64_t seed = 100;
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    for (int64_t prefix : {1, 6, 17}) prefill_then_decode(c.cfg, "cpu", c.moba, 40, prefix, seed += 7);
  }
}

TEST(EngineCpu, PrefillThenDecodeEqualsForwardDouble) {
  uint64_t seed = 200;
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    for (int64_t prefix : {1, 9}) prefill_then_decode(c.cfg, "cpu64", c.moba, 37, prefix, seed += 7);
  }
}

TEST(EngineCpu, PrefillOfTheWholeSequenceEqualsTheForwardsLastRow) {
  uint64_t seed = 300;
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    for (const char* dev : {"cpu", "cpu64"}) prefill_then_decode(c.cfg, dev, c.moba, 40, 40, seed += 7);
  }
}

// Generation past the training context: RoPE positions beyond model.seq_len, compared with
// the forward of a model whose context is longer (same parameters).
TEST(EngineCpu, CapacityBeyondTheTrainingContext) {
  const ModelConfig cfg = tiny(AttentionKind::moba, 4, 2);
  prefill_then_decode(cfg, "cpu64", true, 64, 10, 400, /*capacity=*/64);
  prefill_then_decode(cfg, "cpu", true, 64, 30, 410, /*capacity=*/70);
}

// A batch of prompts of different lengths, decoded together, equals each decoded alone
// (and the forward).
TEST(EngineCpu, BatchEqualsEachSequenceAlone) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    for (const std::string dev : {"cpu", "cpu64"}) {
      const ModelConfig& cfg = c.cfg;
      const int64_t V = cfg.vocab_size, steps = 12;
      const std::vector<float> params = random_params(cfg, 500);
      const std::vector<int64_t> prompt_lens{5, 13, 1, 28};
      const int64_t B = static_cast<int64_t>(prompt_lens.size());
      std::vector<std::vector<int32_t>> seqs, prompts;
      for (int64_t b = 0; b < B; ++b) {
        seqs.push_back(random_tokens(prompt_lens[b] + steps, V, 510 + b));
        prompts.emplace_back(seqs[b].begin(), seqs[b].begin() + prompt_lens[b]);
      }
      auto batch = make_engine(cfg, params, {dev, B, 0, c.moba});
      std::vector<std::unique_ptr<Engine>> alone;
      std::vector<std::vector<double>> alone_rows(B);
      for (int64_t b = 0; b < B; ++b) {
        alone.push_back(make_engine(cfg, params, {dev, 1, 0, c.moba}));
        alone_rows[b] = logits_of(*alone[b], alone[b]->prefill({prompts[b]}));
      }
      std::vector<double> rows = logits_of(*batch, batch->prefill(prompts));
      const double tol = tol_of(dev);
      for (int64_t step = 0; step <= steps; ++step) {
        std::vector<int32_t> next(B);
        for (int64_t b = 0; b < B; ++b) {
          ASSERT_EQ(batch->length(b), prompt_lens[b] + step);
          expect_row(rows, b * V, alone_rows[b], 0, V, tol,
                     dev + " sequence " + std::to_string(b) + " step " + std::to_string(step));
          if (step < steps) next[b] = seqs[b][prompt_lens[b] + step];
        }
        if (step == steps) break;
        rows = logits_of(*batch, batch->decode(next));
        for (int64_t b = 0; b < B; ++b)
          alone_rows[b] = logits_of(*alone[b], alone[b]->decode(std::span<const int32_t>(&next[b], 1)));
      }
      // And the last rows equal the forward of each whole sequence.
      for (int64_t b = 0; b < B; ++b) {
        const std::vector<double> want = dev == "cpu" ? forward_logits<float>(cfg, params, seqs[b], c.moba)
                                                      : forward_logits<double>(cfg, params, seqs[b], c.moba);
        expect_row(rows, b * V, want, prompt_lens[b] + steps - 1, V, tol, dev + " forward");
      }
    }
  }
}

// A second prefill starts every sequence anew.
TEST(EngineCpu, PrefillRestarts) {
  const ModelConfig cfg = tiny(AttentionKind::moba, 4, 2);
  const std::vector<float> params = random_params(cfg, 600);
  const std::vector<int32_t> seq = random_tokens(20, cfg.vocab_size, 601);
  auto e = make_engine(cfg, params, {"cpu64", 1, 0, true});
  e->prefill({random_tokens(30, cfg.vocab_size, 602)});
  e->decode(std::vector<int32_t>{3});
  const std::vector<double> got = logits_of(*e, e->prefill({seq}));
  EXPECT_EQ(e->length(0), 20);
  expect_row(got, 0, forward_logits<double>(cfg, params, seq, true), 19, cfg.vocab_size, 1e-10,
             "second prefill");
}

TEST(EngineCpu, CacheBytes) {
  ModelConfig cfg = tiny(AttentionKind::moba, 4, 2);
  cfg.layers = 3;
  cfg.attention.full_attention_last_layers = 1;
  const std::vector<float> params = random_params(cfg, 700);
  auto e = make_engine(cfg, params, {"cpu", 2, 24, true});
  // Two MoBA layers (means every 4 tokens) and one full layer (one means row).
  const size_t moba = attn::KVCache<float>(2, 24, 2, 4, 4).bytes();
  const size_t full = attn::KVCache<float>(2, 24, 2, 4, 24).bytes();
  EXPECT_EQ(e->cache_bytes(), 2 * moba + full);
  EXPECT_GE(full, 2u * 24 * 2 * 2 * 4 * sizeof(float));  // K and V at least
  EXPECT_EQ(e->capacity(), 24);
  EXPECT_EQ(e->batch(), 2);
  EXPECT_EQ(make_engine(cfg, params, {"cpu64", 1, 0, true})->capacity(), cfg.seq_len);
}

template <typename Fn>
void expect_error(Fn fn, const std::string& part) {
  try {
    fn();
    ADD_FAILURE() << "no moba::Error, expected one containing '" << part << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

TEST(EngineCpu, ErrorsAreNamed) {
  const ModelConfig cfg = tiny(AttentionKind::moba, 4, 2);
  const std::vector<float> params = random_params(cfg, 800);
  expect_error([&] { make_engine(cfg, std::vector<float>(10), {}); },
               "parameter array has 10 elements, the model needs");
  expect_error([&] { make_engine(cfg, params, {"tpu", 1, 0, true}); },
               "unknown inference device 'tpu'");
#ifdef MOBA_WITH_CUDA
  // A CUDA build refuses this model for the GPU kernels' limits (head dim 4), device or not.
  expect_error([&] { make_engine(cfg, params, {"cuda", 1, 0, true}); }, "model.head_dim = 4");
#else
  expect_error([&] { make_engine(cfg, params, {"cuda", 1, 0, true}); }, "device 'cuda'");
#endif
  expect_error([&] { make_engine(cfg, params, {"cpu", 0, 0, true}); },
               "inference batch must be >= 1");
  expect_error([&] { make_engine(cfg, params, {"cpu", 1, -3, true}); },
               "inference capacity must be >= 1");
  ModelConfig bad = cfg;
  bad.attention.top_k = 0;
  expect_error([&] { make_engine(bad, params, {}); }, "attention.top_k must be >= 1");

  auto e = make_engine(cfg, params, {"cpu", 2, 8, true});
  expect_error([&] { e->prefill({{1, 2}}); }, "1 prompts given, the engine decodes a batch of 2");
  expect_error([&] { e->prefill({{1, 2}, {}}); }, "prompt 1 is empty");
  expect_error([&] { e->prefill({{1, 2}, std::vector<int32_t>(9, 1)}); },
               "prompt 1 holds 9 tokens, more than the engine's capacity of 8");
  expect_error([&] { e->prefill({{1, 13}, {1}}); },
               "prompt 0 holds token id 13 at position 1, outside the vocabulary [0, 13)");
  expect_error([&] { e->prefill({{-1}, {1}}); }, "token id -1");
  e->prefill({{1, 2, 3, 4, 5, 6, 7}, {1}});
  expect_error([&] { e->decode(std::vector<int32_t>{1}); }, "1 tokens given");
  expect_error([&] { e->decode(std::vector<int32_t>{1, 99}); },
               "sequence 1 holds token id 99, outside the vocabulary");
  e->decode(std::vector<int32_t>{1, 2});
  EXPECT_EQ(e->length(0), 8);
  EXPECT_EQ(e->length(1), 2);
  expect_error([&] { e->decode(std::vector<int32_t>{1, 2}); },
               "sequence 0 is at the engine's capacity of 8 tokens");
  expect_error([&] { e->length(2); }, "sequence 2 is not in [0, 2)");
  // A failed decode leaves the engine as it was.
  EXPECT_EQ(e->length(1), 2);
}

TEST(EngineCpu, NonFiniteWeightsStopAtThePrefillAndRequireANewOne) {
  const ModelConfig cfg = tiny(AttentionKind::moba, 2, 2);
  std::vector<float> params = random_params(cfg, 900);
  const model::ParamLayout lay = model::make_param_layout(cfg.resolved());
  params[lay.embed + 5 * cfg.width] = std::nanf("");  // token 5's embedding
  auto e = make_engine(cfg, params, {"cpu", 1, 0, true});
  e->prefill({{1, 2, 3, 4, 1, 2}});
  // Token 5's query is NaN: the gate's scores over the 3 past blocks are not finite.
  expect_error([&] { e->decode(std::vector<int32_t>{5}); }, "gate score is not finite");
  expect_error([&] { e->decode(std::vector<int32_t>{1}); }, "prefill again");
  e->prefill({{1, 2}});
  EXPECT_EQ(e->length(0), 2);
}

}  // namespace
}  // namespace moba::infer
