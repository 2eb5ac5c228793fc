// Ring attention for the full-attention layers (dist/ring_attention.h) over the fake group:
// the sequence split over 1, 2, 3 and 4 ranks, each rank's forward and backward; the
// concatenated out, lse, dq, dk, dv against attn::cpu::dense_forward and dense_backward on
// the whole sequence.
//
// With one rank the ring is the reference's row arithmetic in the reference's order: bit for
// bit. With more, a row's keys arrive shard by shard and are merged (the forward's running
// max and sum, the backward's dq and the travelling dK, dV), the same terms grouped
// differently: equal within rounding (1e-12 relative in float64). What is still bit for bit
// with several ranks, and checked: rank 0's out, lse and dq (its queries see only its own
// shard); and, given the reference's out and lse, the last rank's dk, dv (only its own
// queries read its keys, at step 0, in the reference's order; with the ring's own forward
// their lse differ by rounding). Also: the ring's traffic, counted shard by shard, a
// finite-difference check, and the errors.
#include "dist/ring_attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "attention/attention_cpu.h"
#include "core/error.h"
#include "dist/context_parallel.h"
#include "dist/cp_test_util.h"
#include "dist/fake_communicator.h"

namespace moba::dist {
namespace {

using attn::Layout;
using attn::Options;
using cptest::Inputs;
using namespace std::chrono_literals;

struct Problem {
  int64_t T, Hq, Hkv, D;
  Layout whole() const { return Layout::batched(1, T, Hq, Hkv, D); }
  std::string name() const {
    return "T " + std::to_string(T) + ", Hq " + std::to_string(Hq) + ", Hkv " +
           std::to_string(Hkv) + ", D " + std::to_string(D);
  }
};

template <typename Real>
struct Whole {
  std::vector<Real> out, lse, dq, dk, dv;
};

template <typename Real>
Whole<Real> empty_whole(const Layout& l) {
  return {std::vector<Real>(l.q_elems()), std::vector<Real>(l.lse_elems()),
          std::vector<Real>(l.q_elems()), std::vector<Real>(l.kv_elems()),
          std::vector<Real>(l.kv_elems())};
}

template <typename Real>
struct RankRun {
  Whole<Real> all;                        // the ranks' shards, concatenated
  std::vector<RingTraffic> fwd, bwd;      // per rank
};

// Forward (saving) then backward on R ranks; rank r gets rows [r T_r, (r + 1) T_r), T_r from
// the same shard rule as MoBA's context parallel (whole tokens: S = 1). `fwd`, when given,
// holds the out and lse the backward takes instead of the ring forward's.
template <typename Real>
RankRun<Real> run_ranks(int R, const Problem& p, const Inputs<Real>& in, const Options& opt = {},
                        bool backward = true, const Whole<Real>* fwd = nullptr) {
  const int64_t T_r = context_parallel_shard_tokens(p.T, R, 1);
  const Layout shard = Layout::batched(1, T_r, p.Hq, p.Hkv, p.D);
  const auto Rz = static_cast<size_t>(R);
  RankRun<Real> run{empty_whole<Real>(p.whole()), std::vector<RingTraffic>(Rz),
                    std::vector<RingTraffic>(Rz)};
  FakeGroup group(R);
  group.run([&](Communicator& c) {
    const size_t r = static_cast<size_t>(c.rank());
    auto rows = [&](auto& x, int64_t per_token) {
      const size_t n = static_cast<size_t>(T_r * per_token);
      return std::span(x).subspan(r * n, n);
    };
    auto in_rows = [&](const std::vector<Real>& x, int64_t per_token) {
      return std::span<const Real>(rows(x, per_token));
    };
    const int64_t qw = p.Hq * p.D, kw = p.Hkv * p.D;
    RingSaved saved;
    run.fwd[r] = dense_forward_context_parallel<Real>(
        c, shard, opt, in_rows(in.q, qw), in_rows(in.k, kw), in_rows(in.v, kw),
        rows(run.all.out, qw), rows(run.all.lse, p.Hq), &saved);
    if (!backward) return;
    run.bwd[r] = dense_backward_context_parallel<Real>(
        c, saved, in_rows(in.q, qw), in_rows(in.k, kw), in_rows(in.v, kw),
        in_rows(fwd ? fwd->out : run.all.out, qw), in_rows(fwd ? fwd->lse : run.all.lse, p.Hq),
        in_rows(in.dout, qw),
        rows(run.all.dq, qw), rows(run.all.dk, kw), rows(run.all.dv, kw));
  });
  return run;
}

template <typename Real>
Whole<Real> reference(const Problem& p, const Inputs<Real>& in, const Options& opt = {}) {
  const Layout whole = p.whole();
  Whole<Real> w = empty_whole<Real>(whole);
  attn::cpu::dense_forward<Real>(whole, opt, in.q, in.k, in.v, w.out, w.lse);
  attn::cpu::dense_backward<Real>(whole, opt, in.q, in.k, in.v, w.out, w.lse, in.dout, w.dq,
                                  w.dk, w.dv);
  return w;
}

using cptest::first_difference;

// The largest |a - b| / max(1, |b|).
template <typename Real>
double max_rel_diff(std::span<const Real> a, std::span<const Real> b) {
  double m = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double x = static_cast<double>(a[i]), y = static_cast<double>(b[i]);
    m = std::max(m, std::abs(x - y) / std::max(1.0, std::abs(y)));
  }
  return m;
}

template <typename Real>
std::span<const Real> rows_of(const std::vector<Real>& x, int r, int R) {
  const size_t n = x.size() / static_cast<size_t>(R);
  return std::span<const Real>(x).subspan(static_cast<size_t>(r) * n, n);
}

// The ring's traffic per rank, from the protocol: rank r receives the r shards before its
// own and passes on r + 1 (the last rank none); in the backward the packets are K, V, dK, dV
// and rank R - 1 returns R - 1 finished dK, dV, one to each other rank.
template <typename Real>
void check_traffic(const Problem& p, int R, const RankRun<Real>& run, bool backward) {
  const size_t shard_kv = static_cast<size_t>(p.T / R * p.Hkv * p.D) * sizeof(Real);  // K or V
  RingTraffic fsum, bsum;
  for (int r = 0; r < R; ++r) {
    SCOPED_TRACE("rank " + std::to_string(r));
    const RingTraffic& f = run.fwd[static_cast<size_t>(r)];
    const int64_t passes = r + 1 < R ? r + 1 : 0;
    EXPECT_EQ(f.shards_received, r);
    EXPECT_EQ(f.shards_sent, passes);
    EXPECT_EQ(f.kv_received, static_cast<size_t>(r) * 2 * shard_kv);
    EXPECT_EQ(f.kv_sent, static_cast<size_t>(passes) * 2 * shard_kv);
    EXPECT_EQ(f.grads_returned + f.grads_received, 0);
    EXPECT_EQ(f.grad_sent + f.grad_received, 0u);
    EXPECT_EQ(f.control_sent, static_cast<size_t>(R - 1) * 4 * sizeof(int32_t));
    EXPECT_EQ(f.control_received, f.control_sent);
    fsum.kv_sent += f.kv_sent, fsum.kv_received += f.kv_received;
    if (!backward) continue;
    const RingTraffic& b = run.bwd[static_cast<size_t>(r)];
    EXPECT_EQ(b.shards_received, r);
    EXPECT_EQ(b.shards_sent, passes);
    EXPECT_EQ(b.kv_received, static_cast<size_t>(r) * 4 * shard_kv);
    EXPECT_EQ(b.kv_sent, static_cast<size_t>(passes) * 4 * shard_kv);
    EXPECT_EQ(b.grads_returned, r == R - 1 ? R - 1 : 0);
    EXPECT_EQ(b.grads_received, r < R - 1 ? 1 : 0);
    EXPECT_EQ(b.grad_sent, static_cast<size_t>(b.grads_returned) * 2 * shard_kv);
    EXPECT_EQ(b.grad_received, static_cast<size_t>(b.grads_received) * 2 * shard_kv);
    EXPECT_EQ(b.control_sent + b.control_received, 0u);
    bsum.kv_sent += b.kv_sent, bsum.kv_received += b.kv_received;
    bsum.grad_sent += b.grad_sent, bsum.grad_received += b.grad_received;
  }
  EXPECT_EQ(fsum.kv_sent, fsum.kv_received);
  EXPECT_EQ(bsum.kv_sent, bsum.kv_received);
  EXPECT_EQ(bsum.grad_sent, bsum.grad_received);
  // docs/distributed.md's figure for the most loaded rank: the last receives
  // (R - 1) / R x T x Hkv x D x 2 x b per layer.
  EXPECT_EQ(run.fwd.back().kv_received,
            static_cast<size_t>((R - 1) * p.T / R * p.Hkv * p.D * 2) * sizeof(Real));
}

// The whole property for one problem, inputs and rank count, in float64; returns the largest
// relative difference from the reference over out, lse, dq, dk, dv.
double check_against_reference(const Problem& p, int R, const Inputs<double>& in,
                             const Options& opt = {}) {
  const Whole<double> want = reference(p, in, opt);
  const RankRun<double> got = run_ranks(R, p, in, opt);
  if (R == 1) {
    EXPECT_EQ(first_difference<double>(got.all.out, want.out), -1) << "out";
    EXPECT_EQ(first_difference<double>(got.all.lse, want.lse), -1) << "lse";
    EXPECT_EQ(first_difference<double>(got.all.dq, want.dq), -1) << "dq";
    EXPECT_EQ(first_difference<double>(got.all.dk, want.dk), -1) << "dk";
    EXPECT_EQ(first_difference<double>(got.all.dv, want.dv), -1) << "dv";
  }
  double worst = 0.0;
  auto within = [&](const std::vector<double>& a, const std::vector<double>& b, const char* what) {
    const double d = max_rel_diff<double>(a, b);
    EXPECT_LE(d, 1e-12) << what;
    worst = std::max(worst, d);
  };
  within(got.all.out, want.out, "out");
  within(got.all.lse, want.lse, "lse");
  within(got.all.dq, want.dq, "dq");
  within(got.all.dk, want.dk, "dk");
  within(got.all.dv, want.dv, "dv");
  // Rank 0's queries see only their own shard, at step 0, in the reference's order.
  EXPECT_EQ(first_difference(rows_of(got.all.out, 0, R), rows_of(want.out, 0, R)), -1);
  EXPECT_EQ(first_difference(rows_of(got.all.lse, 0, R), rows_of(want.lse, 0, R)), -1);
  EXPECT_EQ(first_difference(rows_of(got.all.dq, 0, R), rows_of(want.dq, 0, R)), -1);
  // Only the last rank's queries read its keys, at its step 0, in the reference's order: bit
  // for bit when the backward is given the reference's out and lse.
  const RankRun<double> from_ref = run_ranks(R, p, in, opt, /*backward=*/true, &want);
  EXPECT_EQ(first_difference(rows_of(from_ref.all.dk, R - 1, R), rows_of(want.dk, R - 1, R)),
            -1);
  EXPECT_EQ(first_difference(rows_of(from_ref.all.dv, R - 1, R), rows_of(want.dv, R - 1, R)),
            -1);
  check_traffic(p, R, got, /*backward=*/true);
  return worst;
}

TEST(RingAttention, EqualsTheWholeSequence) {
  double worst = 0.0;
  for (uint64_t seed : {1u, 2u})
    for (auto [Hq, Hkv] : {std::pair<int64_t, int64_t>{2, 2}, {4, 2}, {3, 1}})
      for (int64_t T : {12, 24}) {
        const Problem p{T, Hq, Hkv, 8};
        const auto in = cptest::random_inputs<double>(p.whole(), seed * 100 + 7, true);
        for (int R : {1, 2, 3, 4}) {
          SCOPED_TRACE(p.name() + ", seed " + std::to_string(seed) + ", " + std::to_string(R) +
                       " ranks");
          worst = std::max(worst, check_against_reference(p, R, in));
        }
      }
  std::printf("largest relative difference from the whole sequence's: %.3g\n", worst);
}

TEST(RingAttention, SoftmaxScaleAndSingleTokenShards) {
  // A given softmax scale reaches every step; shards of one token (T = R) are the
  // smallest the rule allows.
  Options opt;
  opt.softmax_scale = 0.7;
  const Problem p{12, 4, 2, 8};
  const auto in = cptest::random_inputs<double>(p.whole(), 31, true);
  for (int R : {2, 3, 4}) check_against_reference(p, R, in, opt);
  const Problem tiny{4, 3, 1, 4};
  check_against_reference(tiny, 4, cptest::random_inputs<double>(tiny.whole(), 32, true));
}

TEST(RingAttention, FloatInputsToo) {
  const Problem p{24, 4, 2, 16};
  const auto in = cptest::random_inputs<float>(p.whole(), 41, true);
  const Whole<float> want = reference(p, in);
  for (int R : {1, 2, 3, 4}) {
    SCOPED_TRACE(std::to_string(R) + " ranks");
    const RankRun<float> got = run_ranks(R, p, in);
    EXPECT_LE(max_rel_diff<float>(got.all.out, want.out), 1e-6);
    EXPECT_LE(max_rel_diff<float>(got.all.lse, want.lse), 1e-6);
    // Gradients travel and are rounded to float between hops.
    EXPECT_LE(max_rel_diff<float>(got.all.dq, want.dq), 1e-5);
    EXPECT_LE(max_rel_diff<float>(got.all.dk, want.dk), 1e-5);
    EXPECT_LE(max_rel_diff<float>(got.all.dv, want.dv), 1e-5);
    check_traffic(p, R, got, /*backward=*/true);
  }
}

TEST(RingAttention, FiniteDifferencesOfTheLoss) {
  // L = sum(out * W) over all ranks; central differences of L in every element of q, k, v
  // against the backward's gradient, on 3 ranks.
  const Problem p{6, 2, 1, 4};
  const int R = 3;
  Inputs<double> in = cptest::random_inputs<double>(p.whole(), 51, true);
  const RankRun<double> base = run_ranks(R, p, in);
  auto loss = [&](const Inputs<double>& x) {
    const RankRun<double> r = run_ranks(R, p, x, {}, /*backward=*/false);
    double l = 0.0;
    for (size_t i = 0; i < x.dout.size(); ++i) l += r.all.out[i] * x.dout[i];
    return l;
  };
  const std::function<double()> at_in = [&] { return loss(in); };
  double worst = cptest::check_central_differences(in.q, base.all.dq, "dq", at_in);
  worst = std::max(worst, cptest::check_central_differences(in.k, base.all.dk, "dk", at_in));
  worst = std::max(worst, cptest::check_central_differences(in.v, base.all.dv, "dv", at_in));
  std::printf("largest |gradient - central difference|: %.3g\n", worst);
}

using cptest::Failure;
using cptest::run_failing;

// Rank r calls the forward on a shard of tokens[r] tokens with heads[r] = (Hq, Hkv) and head
// dim dims[r], random data.
void call_with(Communicator& c, const std::vector<int64_t>& tokens,
               const std::vector<std::pair<int64_t, int64_t>>& heads,
               const std::vector<int64_t>& dims) {
  const size_t r = static_cast<size_t>(c.rank());
  const Layout shard = Layout::batched(1, tokens[r], heads[r].first, heads[r].second, dims[r]);
  const auto in = cptest::random_inputs<double>(shard, r + 1);
  std::vector<double> out(shard.q_elems()), lse(shard.lse_elems());
  dense_forward_context_parallel<double>(c, shard, {}, in.q, in.k, in.v, out, lse);
}

void expect_everywhere(const Failure& f, const std::string& want) {
  EXPECT_NE(f.group.find(want), std::string::npos) << f.group;
  for (size_t r = 0; r < f.ranks.size(); ++r)
    EXPECT_NE(f.ranks[r].find(want), std::string::npos) << "rank " << r << ": " << f.ranks[r];
}

TEST(RingAttention, ShardsOfDifferentLengthsAreAnErrorOnEveryRank) {
  const Failure f = run_failing(3, [](Communicator& c) {
    call_with(c, {8, 8, 12}, {{2, 1}, {2, 1}, {2, 1}}, {4, 4, 4});
  });
  expect_everywhere(f, "ring attention: the shards differ in length: rank 0 holds 8 tokens, "
                       "rank 2 holds 12");
}

TEST(RingAttention, RanksThatDisagreeOnTheShapeAreAnErrorOnEveryRank) {
  expect_everywhere(run_failing(2, [](Communicator& c) {
                      call_with(c, {8, 8}, {{4, 2}, {2, 2}}, {4, 4});
                    }),
                    "disagree on the query heads Hq: rank 0 has 4, rank 1 has 2");
  expect_everywhere(run_failing(3, [](Communicator& c) {
                      call_with(c, {8, 8, 8}, {{4, 2}, {4, 2}, {4, 1}}, {4, 4, 4});
                    }),
                    "disagree on the kv heads Hkv: rank 0 has 2, rank 2 has 1");
  expect_everywhere(run_failing(4, [](Communicator& c) {
                      call_with(c, {8, 8, 8, 8}, {{2, 1}, {2, 1}, {2, 1}, {2, 1}},
                                {4, 8, 4, 4});
                    }),
                    "disagree on the head dim D: rank 0 has 4, rank 1 has 8");
}

TEST(RingAttention, RankWithABadBufferIsAnErrorNotAHang) {
  // Rank 1's out is one element short: it throws before any collective, the others are
  // released from the header all-gather (the group's timeout is a minute).
  const auto t0 = std::chrono::steady_clock::now();
  const Failure f = run_failing(3, [](Communicator& c) {
    const Layout shard = Layout::batched(1, 8, 2, 1, 4);
    const auto in = cptest::random_inputs<double>(shard, 1);
    std::vector<double> out(shard.q_elems() - (c.rank() == 1 ? 1 : 0)), lse(shard.lse_elems());
    dense_forward_context_parallel<double>(c, shard, {}, in.q, in.k, in.v, out, lse);
  });
  EXPECT_NE(f.group.find("rank 1 failed: tensor out has 63 elements"), std::string::npos)
      << f.group;
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 10s);
}

TEST(RingAttention, BackwardWithoutOrWithAnotherRanksSavedStateIsAnError) {
  const Layout shard = Layout::batched(1, 8, 2, 1, 4);
  std::vector<RingSaved> saved(2);
  std::vector<Inputs<double>> in(2);
  std::vector<std::vector<double>> out(2), lse(2);
  FakeGroup group(2);
  group.run([&](Communicator& c) {
    const size_t r = static_cast<size_t>(c.rank());
    in[r] = cptest::random_inputs<double>(shard, r + 1, true);
    out[r].resize(shard.q_elems());
    lse[r].resize(shard.lse_elems());
    dense_forward_context_parallel<double>(c, shard, {}, in[r].q, in[r].k, in[r].v, out[r],
                                           lse[r], &saved[r]);
  });
  auto backward_error = [&](const std::function<const RingSaved&(int)>& saved_of,
                            size_t dq_short) {
    return run_failing(2, [&](Communicator& c) {
      const size_t r = static_cast<size_t>(c.rank());
      std::vector<double> dq(shard.q_elems() - dq_short), dk(shard.kv_elems()),
          dv(shard.kv_elems());
      dense_backward_context_parallel<double>(c, saved_of(c.rank()), in[r].q, in[r].k, in[r].v,
                                              out[r], lse[r], in[r].dout, dq, dk, dv);
    });
  };
  const RingSaved none;
  expect_everywhere(backward_error([&](int) -> const RingSaved& { return none; }, 0),
                    "ring attention backward: the saved state is empty");
  expect_everywhere(
      backward_error([&](int r) -> const RingSaved& { return saved[static_cast<size_t>(1 - r)]; },
                     0),
      "the saved state is rank ");
  const Failure f = backward_error(
      [&](int r) -> const RingSaved& { return saved[static_cast<size_t>(r)]; }, 1);
  EXPECT_NE(f.group.find("ring attention backward: dq has 63 elements, but the forward's "
                         "shard of 8 tokens (Hq = 2, Hkv = 1, D = 4) needs T_r x Hq x D = 64"),
            std::string::npos)
      << f.group;
}

}  // namespace
}  // namespace moba::dist
