// The model under context parallel (Model::set_context_parallel; docs/distributed.md): one
// sequence split over R = 2, 3 and 4 ranks of the fake group, each rank a Model holding its
// shard, against one Model on the whole sequence: every rank's loss equals the whole
// sequence's, the sum over the ranks of their parameter gradients equals its gradient, and
// the ranks' token losses, concatenated, equal its token losses. MoBA layers run the block
// fetch (dist/context_parallel.h), full layers ring attention (dist/ring_attention.h).
//
// Not bit for bit with several ranks: the shards' matmuls are other BLAS calls than the
// whole sequence's, the attention is the reference's arithmetic (the single-process model
// uses attention_blas.h), and the loss and gradients are summed per rank first; so equal
// within rounding (checked to 1e-12 relative for the losses, 1e-10 of the largest
// magnitude for the gradients). One rank is the plain model bit for bit.
#include "model/model.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "dist/cp_test_util.h"
#include "dist/fake_communicator.h"
#include "model/params.h"

namespace moba::model {
namespace {

namespace cptest = dist::cptest;

constexpr int64_t kT = 48;  // the whole sequence: 12 blocks of S = 4, split over 2, 3, 4 ranks

ModelConfig small_config(int64_t full_last_layers = 0) {
  ModelConfig c;
  c.vocab_size = 13;
  c.width = 24;
  c.layers = 2;
  c.heads = 4;
  c.kv_heads = 2;
  c.head_dim = 6;
  c.mlp_hidden = 32;
  c.seq_len = kT;
  c.tied_embeddings = false;
  c.init_std = 0.3;  // large weights: attention far from uniform, every path carries gradient
  c.attention.kind = AttentionKind::moba;
  c.attention.block_size = 4;
  c.attention.top_k = 3;
  c.attention.full_attention_last_layers = full_last_layers;
  return c;
}

Batch whole_batch(int64_t T, int64_t V, uint64_t seed) {
  Batch b;
  b.B = 1;
  b.T = T;
  std::mt19937_64 gen(seed);
  for (int64_t i = 0; i <= T; ++i)
    b.tokens.push_back(static_cast<int32_t>(gen() % static_cast<uint64_t>(V)));
  return b;
}

// Rank r's shard of a one-row batch: inputs [r T_r, (r + 1) T_r), their targets (so T_r + 1
// tokens) and that part of the mask.
Batch shard_of(const Batch& whole, int R, int r) {
  const int64_t T_r = whole.T / R;
  Batch b;
  b.B = 1;
  b.T = T_r;
  b.tokens.assign(whole.tokens.begin() + r * T_r, whole.tokens.begin() + (r + 1) * T_r + 1);
  if (!whole.loss_mask.empty())
    b.loss_mask.assign(whole.loss_mask.begin() + r * T_r,
                       whole.loss_mask.begin() + (r + 1) * T_r);
  return b;
}

template <typename Real>
struct Result {
  double loss = 0.0;
  std::vector<Real> grads, token_losses;
  double flops = 0.0;
  std::vector<std::vector<int32_t>> selections;  // per layer, empty for full layers
};

template <typename Real>
void forward_backward(Model<Real>& model, const std::vector<Real>& P, const Batch& batch,
                      bool moba_phase, Result<Real>& run) {
  run.loss = model.forward(P, batch, moba_phase);
  run.token_losses.assign(model.token_losses().begin(), model.token_losses().end());
  run.flops = model.last_flops();
  run.selections.clear();
  for (int64_t l = 0; l < model.config().layers; ++l) {
    const attn::Selection* sel = model.selection(l);
    run.selections.push_back(sel ? sel->blocks : std::vector<int32_t>{});
  }
  run.grads.assign(P.size(), Real(0));
  model.backward(P, run.grads, 1.0);
}

template <typename Real>
Result<Real> run_whole(const ModelConfig& cfg, const std::vector<Real>& P, const Batch& batch,
                    bool moba_phase) {
  Model<Real> model(cfg);
  Result<Real> run;
  forward_backward(model, P, batch, moba_phase, run);
  return run;
}

// Each rank of a FakeGroup of R runs its own Model on its shard.
template <typename Real>
std::vector<Result<Real>> run_ranks(const ModelConfig& cfg, const std::vector<Real>& P,
                                 const Batch& whole, bool moba_phase, int R) {
  std::vector<Result<Real>> runs(static_cast<size_t>(R));
  dist::FakeGroup group(R);
  group.run([&](dist::Communicator& c) {
    Model<Real> model(cfg);
    model.set_context_parallel(&c);
    forward_backward(model, P, shard_of(whole, R, c.rank()), moba_phase,
                     runs[static_cast<size_t>(c.rank())]);
  });
  return runs;
}

template <typename Real>
std::vector<Real> random_params(const ModelConfig& cfg, uint64_t seed) {
  Model<Real> model(cfg);
  std::vector<Real> P(model.layout().total);
  init_params<Real>(model.layout(), seed, P);
  return P;
}

// max |a - b| / max |b|.
template <typename Real>
double rel_max(const std::vector<Real>& a, const std::vector<Real>& b) {
  EXPECT_EQ(a.size(), b.size());
  double diff = 0.0, scale = 0.0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  }
  return scale > 0.0 ? diff / scale : diff;
}

struct Measured {
  double loss = 0.0, grads = 0.0, token_losses = 0.0;
};

// The whole property for one configuration, batch and rank count; returns the errors.
template <typename Real>
Measured check_ranks(const ModelConfig& cfg, const std::vector<Real>& P, const Batch& whole,
                     bool moba_phase, int R, double loss_tol, double grad_tol) {
  SCOPED_TRACE(std::to_string(R) + " ranks");
  const Result<Real> want = run_whole<Real>(cfg, P, whole, moba_phase);
  const std::vector<Result<Real>> got = run_ranks<Real>(cfg, P, whole, moba_phase, R);
  Measured m;
  std::vector<Real> grads(P.size(), Real(0)), token_losses;
  double flops = 0.0;
  for (int r = 0; r < R; ++r) {
    const Result<Real>& g = got[static_cast<size_t>(r)];
    EXPECT_EQ(g.loss, got[0].loss) << "rank " << r << "'s loss differs from rank 0's";
    m.loss = std::max(m.loss, std::abs(g.loss - want.loss) / std::abs(want.loss));
    for (size_t i = 0; i < grads.size(); ++i) grads[i] += g.grads[i];  // the caller's sum
    token_losses.insert(token_losses.end(), g.token_losses.begin(), g.token_losses.end());
    flops += g.flops;
  }
  m.grads = rel_max(grads, want.grads);
  m.token_losses = rel_max(token_losses, want.token_losses);
  EXPECT_LE(m.loss, loss_tol);
  EXPECT_LE(m.grads, grad_tol);
  EXPECT_LE(m.token_losses, loss_tol);
  EXPECT_NEAR(flops, want.flops, 1e-12 * want.flops) << "the ranks' FLOPs sum to the whole's";
  // The gate picks the same blocks: the ranks' selections, concatenated, are the whole's.
  for (size_t l = 0; l < want.selections.size(); ++l) {
    std::vector<int32_t> sel;
    for (const Result<Real>& g : got)
      sel.insert(sel.end(), g.selections[l].begin(), g.selections[l].end());
    EXPECT_EQ(sel, want.selections[l]) << "layer " << l << "'s selection";
  }
  return m;
}

void report(const std::string& what, const std::string& ranks, const Measured& m) {
  std::cout << "[measured] " << what << ", " << ranks << ": loss " << m.loss << ", gradient sum "
            << m.grads << ", token losses " << m.token_losses << " (relative)\n";
}

// float64: every R, two seeds of parameters and tokens.
void check_double(const std::string& what, const ModelConfig& cfg, bool moba_phase,
                  const std::vector<uint8_t>& mask = {}) {
  Measured worst;
  for (uint64_t seed : {1u, 2u}) {
    const std::vector<double> P = random_params<double>(cfg, seed);
    Batch whole = whole_batch(kT, cfg.vocab_size, seed + 10);
    whole.loss_mask = mask;
    for (int R : {2, 3, 4}) {
      SCOPED_TRACE(what + ", seed " + std::to_string(seed));
      const Measured m = check_ranks<double>(cfg, P, whole, moba_phase, R, 1e-12, 1e-10);
      report(what + ", seed " + std::to_string(seed), "R = " + std::to_string(R), m);
      worst.loss = std::max(worst.loss, m.loss);
      worst.grads = std::max(worst.grads, m.grads);
      worst.token_losses = std::max(worst.token_losses, m.token_losses);
    }
  }
  report(what, "worst over seeds 1-2 and R = 2, 3, 4", worst);
}

TEST(ContextParallelModel, AllMobaEqualsTheWholeSequence) {
  check_double("all MoBA", small_config(), true);
}

TEST(ContextParallelModel, HybridMobaAndFullLayersEqualTheWholeSequence) {
  check_double("MoBA + full (last layer)", small_config(1), true);
}

TEST(ContextParallelModel, AllFullLayersEqualTheWholeSequence) {
  check_double("moba_phase = false (all full)", small_config(), false);
}

// A mask with zeros here and there, and rank 3's whole shard (of 4) masked out: that rank
// counts nothing but still passes gradient to the others' keys.
std::vector<uint8_t> sparse_mask() {
  std::vector<uint8_t> m(kT, 1);
  for (int i : {0, 3, 7, 20, 23, 33}) m[static_cast<size_t>(i)] = 0;
  std::fill(m.begin() + 36, m.end(), uint8_t{0});
  return m;
}

TEST(ContextParallelModel, LossMaskAveragesOverAllRanksCountedPositions) {
  check_double("all MoBA, loss mask", small_config(), true, sparse_mask());
  check_double("MoBA + full, loss mask", small_config(1), true, sparse_mask());
}

TEST(ContextParallelModel, OneRankIsThePlainModelBitForBit) {
  for (bool moba_phase : {true, false}) {
    const ModelConfig cfg = small_config(1);
    const std::vector<double> P = random_params<double>(cfg, 3);
    Batch whole = whole_batch(kT, cfg.vocab_size, 4);
    whole.loss_mask = sparse_mask();
    const Result<double> want = run_whole<double>(cfg, P, whole, moba_phase);
    const Result<double> got = run_ranks<double>(cfg, P, whole, moba_phase, 1)[0];
    EXPECT_EQ(got.loss, want.loss);
    EXPECT_EQ(cptest::first_difference<double>(got.grads, want.grads), -1);
    EXPECT_EQ(cptest::first_difference<double>(got.token_losses, want.token_losses), -1);
    EXPECT_EQ(got.flops, want.flops);
    EXPECT_EQ(got.selections, want.selections);
  }
}

// A dense model (moba_phase = false) needs whole tokens only: shards of 6 tokens at S = 4.
TEST(ContextParallelModel, AllFullLayersTakeShardsOfAnyLength) {
  const ModelConfig cfg = small_config();
  const std::vector<double> P = random_params<double>(cfg, 5);
  const Batch whole = whole_batch(12, cfg.vocab_size, 6);
  const Measured m = check_ranks<double>(cfg, P, whole, false, 2, 1e-12, 1e-10);
  report("all full, T = 12, T_r = 6", "R = 2", m);
}

TEST(ContextParallelModel, FloatIsCloseToTheWholeSequence) {
  const ModelConfig cfg = small_config(1);
  const std::vector<float> P = random_params<float>(cfg, 7);
  const Batch whole = whole_batch(kT, cfg.vocab_size, 8);
  const Measured m = check_ranks<float>(cfg, P, whole, true, 4, 1e-5, 1e-4);
  report("float, MoBA + full", "R = 4", m);
}

TEST(ContextParallelModel, BackwardAccumulatesWithTheLossScale) {
  // backward() adds loss_scale x the rank's part, as without context parallel.
  const ModelConfig cfg = small_config();
  const std::vector<double> P = random_params<double>(cfg, 9);
  const Batch whole = whole_batch(kT, cfg.vocab_size, 10);
  dist::FakeGroup group(2);
  group.run([&](dist::Communicator& c) {
    Model<double> model(cfg);
    model.set_context_parallel(&c);
    const Batch shard = shard_of(whole, 2, c.rank());
    std::vector<double> g1(P.size(), 0.0), g2(P.size(), 0.0);
    model.forward(P, shard, true);
    model.backward(P, g1, 1.0);
    for (int i = 0; i < 2; ++i) {
      model.forward(P, shard, true);
      model.backward(P, g2, 0.5);
    }
    for (size_t i = 0; i < P.size(); ++i)
      ASSERT_NEAR(g1[i], g2[i], 1e-12 + 1e-12 * std::abs(g1[i])) << "rank " << c.rank();
  });
}

// Runs every rank's forward on its batch from make(rank) and returns the failure.
cptest::Failure run_bad(int R, const ModelConfig& cfg, const std::function<Batch(int)>& make,
                        bool moba_phase = true, bool force = false) {
  const std::vector<double> P = random_params<double>(cfg, 11);
  return cptest::run_failing(R, [&](dist::Communicator& c) {
    Model<double> model(cfg);
    model.set_context_parallel(&c);
    if (force) model.force_selections(std::vector<std::vector<int32_t>>(cfg.layers));
    model.forward(P, make(c.rank()), moba_phase);
  });
}

// Every rank throws the same message, which holds `needle`.
void expect_every_rank(const cptest::Failure& f, const std::string& needle) {
  for (size_t r = 0; r < f.ranks.size(); ++r)
    EXPECT_NE(f.ranks[r].find(needle), std::string::npos)
        << "rank " << r << ": '" << f.ranks[r] << "' lacks '" << needle << "'";
  EXPECT_NE(f.group.find(needle), std::string::npos) << f.group;
}

// The same for `whole` split evenly over R ranks.
void expect_split_fails(const ModelConfig& cfg, const Batch& whole, int R,
                        const std::string& needle, bool force = false) {
  expect_every_rank(
      run_bad(R, cfg, [&](int r) { return shard_of(whole, R, r); }, true, force), needle);
}

TEST(ContextParallelModelErrors, BatchOfSeveralRows) {
  const ModelConfig cfg = small_config();
  const Batch whole = whole_batch(kT, cfg.vocab_size, 1);
  const cptest::Failure f = run_bad(2, cfg, [&](int r) {
    Batch b = shard_of(whole, 2, r);
    if (r == 1) {  // two rows of 12
      b.B = 2;
      b.T = 12;
      b.tokens.insert(b.tokens.begin() + 13, b.tokens[12]);
    }
    return b;
  });
  expect_every_rank(f, "context parallel: rank 1's batch holds B = 2 rows; each rank holds one "
                       "row, its shard of one sequence");
}

TEST(ContextParallelModelErrors, ShardNotOfWholeBlocks) {
  const ModelConfig cfg = small_config(1);  // layer 0 runs MoBA
  expect_split_fails(cfg, whole_batch(12, cfg.vocab_size, 1), 2,
                     "context parallel: a shard of T_r = 6 tokens is not a whole number of "
                     "MoBA blocks of S = 4 tokens");
}

TEST(ContextParallelModelErrors, ShardsOfDifferentLengths) {
  const ModelConfig cfg = small_config();
  const Batch whole = whole_batch(kT, cfg.vocab_size, 1);
  const cptest::Failure f = run_bad(3, cfg, [&](int r) {
    Batch b = shard_of(whole, 3, r);  // 16 tokens each, rank 2 only 12
    if (r == 2) {
      b.T = 12;
      b.tokens.resize(13);
    }
    return b;
  });
  expect_every_rank(f, "context parallel: the shards differ in length: rank 0 holds 16 tokens, "
                       "rank 2 holds 12");
}

TEST(ContextParallelModelErrors, PackedDocumentsInAShard) {
  const ModelConfig cfg = small_config();
  const Batch whole = whole_batch(kT, cfg.vocab_size, 1);
  const cptest::Failure f = run_bad(2, cfg, [&](int r) {
    Batch b = shard_of(whole, 2, r);
    if (r == 0) b.cu_seqlens = {0, 8, 24};
    return b;
  });
  expect_every_rank(f, "context parallel: rank 0's shard holds 2 documents (cu_seqlens); a "
                       "shard is part of one sequence: packed documents are not supported");
}

TEST(ContextParallelModelErrors, OneDocumentBoundaryIsAccepted) {
  // cu_seqlens {0, T_r}: one document, the same as none.
  const ModelConfig cfg = small_config();
  const std::vector<double> P = random_params<double>(cfg, 12);
  const Batch whole = whole_batch(kT, cfg.vocab_size, 13);
  double with = 0.0, without = 0.0;
  dist::FakeGroup group(2);
  group.run([&](dist::Communicator& c) {
    Model<double> model(cfg);
    model.set_context_parallel(&c);
    Batch b = shard_of(whole, 2, c.rank());
    const double plain = model.forward(P, b, true);
    b.cu_seqlens = {0, b.T};
    const double bounded = model.forward(P, b, true);
    if (c.rank() == 0) without = plain, with = bounded;
  });
  EXPECT_EQ(with, without);
}

TEST(ContextParallelModelErrors, ForcedSelections) {
  const ModelConfig cfg = small_config();
  expect_split_fails(cfg, whole_batch(kT, cfg.vocab_size, 1), 2,
                     "context parallel: rank 0 set force_selections, which is not supported "
                     "under context parallel",
                     /*force=*/true);
}

TEST(ContextParallelModelErrors, WholeSequenceLongerThanTheModel) {
  const ModelConfig cfg = small_config();  // seq_len 48
  expect_split_fails(cfg, whole_batch(64, cfg.vocab_size, 1), 4,
                     "context parallel: the whole sequence, R x T_r = 4 x 16 = 64 tokens, is "
                     "longer than model.seq_len = 48");
}

TEST(ContextParallelModelErrors, NothingCountedOnAnyRank) {
  const ModelConfig cfg = small_config();
  Batch whole = whole_batch(kT, cfg.vocab_size, 1);
  whole.loss_mask.assign(kT, 0);
  expect_split_fails(cfg, whole, 2, "context parallel: the loss_mask is all zeros on every rank");
}

TEST(ContextParallelModelErrors, AnErrorOnOneRankReleasesTheOthers) {
  // A token outside the vocabulary on rank 1 only: thrown there, before the header; rank 0
  // fails at the header's all-gather at once (FakeGroup), not after the timeout.
  const ModelConfig cfg = small_config();
  const Batch whole = whole_batch(kT, cfg.vocab_size, 1);
  const cptest::Failure f = run_bad(2, cfg, [&](int r) {
    Batch b = shard_of(whole, 2, r);
    if (r == 1) b.tokens[5] = 99;
    return b;
  });
  EXPECT_NE(f.ranks[1].find("token 99 at index 5 of the batch is outside the vocabulary"),
            std::string::npos)
      << f.ranks[1];
  EXPECT_FALSE(f.ranks[0].empty());
  EXPECT_NE(f.group.find("rank 1 failed"), std::string::npos) << f.group;
}

}  // namespace
}  // namespace moba::model
