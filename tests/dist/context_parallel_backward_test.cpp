// MoBA's context-parallel backward (dist/context_parallel.h) over the fake group: the
// sequence split over 2, 3 and 4 ranks, each rank's forward saving its selection and
// fetched K/V, then the backward; the concatenated dq, dk, dv against
// attn::cpu::moba_backward on the whole sequence with moba_gate's selection.
//
// dq is bit for bit: a query row's keys are the same, in the same order, whether read in
// place or fetched, and the row arithmetic is backward_core's. dk, dv of a (block, kv head)
// pair that no other rank fetched are bit for bit too (the owner sums its own queries'
// contributions in the reference's order). A fetched pair's dk, dv are the owner's sum plus
// each fetching rank's partial sum, added in rank order: the same terms grouped
// differently, so equal to the reference within rounding (checked to 1e-12), not bit for
// bit. Also: a finite-difference check of a scalar loss, the backward's traffic (the
// forward's fetch reversed), determinism, and the errors.
#include "dist/context_parallel.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "attention/attention_cpu.h"
#include "attention/gate.h"
#include "core/error.h"
#include "dist/fake_communicator.h"
#include "dist/cp_test_util.h"

namespace moba::dist {
namespace {

using attn::Layout;
using attn::MobaConfig;
using attn::Options;
using attn::Selection;

using cptest::Inputs;
using cptest::Problem;

// q, k, v and dout.
template <typename Real>
Inputs<Real> random_inputs(const Layout& l, uint64_t seed) {
  return cptest::random_inputs<Real>(l, seed, /*with_dout=*/true);
}

// The whole sequence's tensors, either from one process or concatenated over the ranks
// (shards are contiguous rows, so the concatenation is the whole sequence's layout).
template <typename Real>
struct Whole {
  std::vector<Real> out, lse, dq, dk, dv;
};

template <typename Real>
struct RankRun {
  Whole<Real> all;
  std::vector<ContextParallelSaved<Real>> saved;  // per rank
  std::vector<ContextParallelTraffic> fwd, bwd;   // per rank
};

// Forward (saving) then backward on R ranks; rank r gets rows [r T_r, (r + 1) T_r).
template <typename Real>
RankRun<Real> run_ranks(int R, const Problem& p, const Inputs<Real>& in, bool backward = true) {
  const int64_t T_r = context_parallel_shard_tokens(p.tokens(), R, p.S);
  const Layout shard = Layout::batched(1, T_r, p.Hq, p.Hkv, p.D);
  const auto Rz = static_cast<size_t>(R);
  RankRun<Real> run;
  run.all = {std::vector<Real>(p.whole().q_elems()), std::vector<Real>(p.whole().lse_elems()),
             std::vector<Real>(p.whole().q_elems()), std::vector<Real>(p.whole().kv_elems()),
             std::vector<Real>(p.whole().kv_elems())};
  run.saved.resize(Rz);
  run.fwd.resize(Rz);
  run.bwd.resize(Rz);
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
    run.fwd[r] = moba_forward_context_parallel<Real>(
        c, shard, p.cfg(), {}, in_rows(in.q, qw), in_rows(in.k, kw), in_rows(in.v, kw),
        rows(run.all.out, qw), rows(run.all.lse, p.Hq), &run.saved[r]);
    if (!backward) return;
    run.bwd[r] = moba_backward_context_parallel<Real>(
        c, run.saved[r], in_rows(in.q, qw), in_rows(in.k, kw), in_rows(in.v, kw),
        in_rows(run.all.out, qw), in_rows(run.all.lse, p.Hq), in_rows(in.dout, qw),
        rows(run.all.dq, qw), rows(run.all.dk, kw), rows(run.all.dv, kw));
  });
  return run;
}

template <typename Real>
Whole<Real> reference(const Problem& p, const Inputs<Real>& in) {
  const Layout whole = p.whole();
  const Selection sel = attn::moba_gate<Real>(whole, p.cfg(), in.q, in.k);
  Whole<Real> w{std::vector<Real>(whole.q_elems()), std::vector<Real>(whole.lse_elems()),
                std::vector<Real>(whole.q_elems()), std::vector<Real>(whole.kv_elems()),
                std::vector<Real>(whole.kv_elems())};
  attn::cpu::moba_forward<Real>(whole, p.cfg(), sel, {}, in.q, in.k, in.v, w.out, w.lse);
  attn::cpu::moba_backward<Real>(whole, p.cfg(), sel, {}, in.q, in.k, in.v, w.out, w.lse,
                                 in.dout, w.dq, w.dk, w.dv);
  return w;
}

using cptest::first_difference;

template <typename Real>
double max_abs_diff(std::span<const Real> a, std::span<const Real> b) {
  double m = 0.0;
  for (size_t i = 0; i < a.size(); ++i)
    m = std::max(m, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
  return m;
}

// (block, kv head) ids some other rank fetched, from the owners' saved state.
template <typename Real>
std::set<int32_t> served_ids(const RankRun<Real>& run) {
  std::set<int32_t> ids;
  for (const auto& s : run.saved) ids.insert(s.served_ids.begin(), s.served_ids.end());
  return ids;
}

struct Checked {
  double dkv_max_diff = 0.0;  // over the fetched pairs (the others are bit for bit)
  int64_t pairs_fetched = 0;
};

// The whole property for one problem, inputs and rank count.
Checked check_against_reference(const Problem& p, int R, const Inputs<double>& in) {
  const Whole<double> want = reference(p, in);
  const RankRun<double> got = run_ranks(R, p, in);
  Checked c;
  // The forward is unchanged by saving (context_parallel_test checks it in depth).
  EXPECT_EQ(first_difference<double>(got.all.out, want.out), -1);
  EXPECT_EQ(first_difference<double>(got.all.lse, want.lse), -1);
  EXPECT_EQ(first_difference<double>(got.all.dq, want.dq), -1) << "dq";
  c.dkv_max_diff = std::max(max_abs_diff<double>(got.all.dk, want.dk),
                            max_abs_diff<double>(got.all.dv, want.dv));
  EXPECT_LE(c.dkv_max_diff, 1e-12);
  // Pair by pair: bit for bit unless another rank fetched it.
  const std::set<int32_t> served = served_ids(got);
  for (int64_t block = 0; block < p.blocks; ++block)
    for (int64_t kvh = 0; kvh < p.Hkv; ++kvh) {
      if (served.count(static_cast<int32_t>(block * p.Hkv + kvh))) continue;
      for (int64_t t = block * p.S; t < (block + 1) * p.S; ++t) {
        const size_t at = static_cast<size_t>((t * p.Hkv + kvh) * p.D);
        const size_t n = static_cast<size_t>(p.D);
        EXPECT_EQ(first_difference<double>(std::span(got.all.dk).subspan(at, n),
                                           std::span(want.dk).subspan(at, n)),
                  -1)
            << "dk of block " << block << ", kv head " << kvh << ", unfetched";
        EXPECT_EQ(first_difference<double>(std::span(got.all.dv).subspan(at, n),
                                           std::span(want.dv).subspan(at, n)),
                  -1)
            << "dv of block " << block << ", kv head " << kvh << ", unfetched";
      }
    }
  // The backward's traffic is the forward's K/V fetch reversed, pair for pair, byte for byte.
  size_t sent = 0, received = 0;
  for (size_t r = 0; r < static_cast<size_t>(R); ++r) {
    const ContextParallelTraffic &f = got.fwd[r], &b = got.bwd[r];
    EXPECT_EQ(b.blocks_fetched, f.blocks_fetched) << "rank " << r;
    EXPECT_EQ(b.blocks_served, f.blocks_served) << "rank " << r;
    EXPECT_EQ(b.kv_sent, f.kv_received) << "rank " << r;
    EXPECT_EQ(b.kv_received, f.kv_sent) << "rank " << r;
    EXPECT_EQ(b.means_sent + b.means_received + b.control_sent + b.control_received, 0u);
    sent += b.kv_sent;
    received += b.kv_received;
    c.pairs_fetched += b.blocks_fetched;
  }
  EXPECT_EQ(sent, received);
  return c;
}

TEST(ContextParallelBackward, EqualsTheWholeSequenceBackward) {
  int64_t fetched_any = 0;
  double worst = 0.0;
  for (uint64_t seed : {1u, 2u})
    for (auto [Hq, Hkv] : {std::pair<int64_t, int64_t>{2, 2}, {4, 2}, {3, 1}})
      for (int64_t K : {1, 2, 3}) {
        const Problem p{12, 4, Hq, Hkv, 8, K};  // 12 blocks: 2, 3 and 4 ranks hold whole ones
        const auto in = random_inputs<double>(p.whole(), seed * 100 + static_cast<uint64_t>(K));
        for (int R : {2, 3, 4}) {
          SCOPED_TRACE("seed " + std::to_string(seed) + ", " + p.name() + ", " +
                       std::to_string(R) + " ranks");
          const Checked c = check_against_reference(p, R, in);
          if (K == 1) {
            EXPECT_EQ(c.pairs_fetched, 0);  // nothing remote: everything bit for bit
            EXPECT_EQ(c.dkv_max_diff, 0.0);
          }
          fetched_any += c.pairs_fetched;
          worst = std::max(worst, c.dkv_max_diff);
        }
      }
  EXPECT_GT(fetched_any, 0);  // gradients did travel back
  EXPECT_GT(worst, 0.0);      // and the regrouped sums did round differently somewhere
  RecordProperty("dkv_max_abs_diff", std::to_string(worst));
  std::printf("largest |dk, dv - reference| over the fetched pairs: %.3g\n", worst);
}

TEST(ContextParallelBackward, RankZeroSelectsOnlyLocalBlocks) {
  // Every query points along (1, ..., 1) and block 0's keys do too: every query that scores
  // picks block 0 (K = 2). Rank 0's queries read only its own blocks: it fetches nothing,
  // sends no gradient, and its dq is all local; ranks 1-3 fetch block 0 of each kv head
  // and send its dk, dv back, which rank 0 sums with its own: the only pairs not bit for bit.
  const Problem p{16, 4, 4, 2, 8, 2};
  auto in = random_inputs<double>(p.whole(), 5);
  for (double& x : in.q) x = 1.0 + 0.01 * x;
  for (double& x : in.k) x *= 0.1;
  for (size_t i = 0; i < static_cast<size_t>(p.S * p.Hkv * p.D); ++i) in.k[i] += 1.0;
  const int R = 4;
  check_against_reference(p, R, in);
  const RankRun<double> run = run_ranks(R, p, in);
  const size_t unit_bytes = static_cast<size_t>(2 * p.S * p.D) * sizeof(double);
  for (int r = 0; r < R; ++r) {
    const ContextParallelTraffic& b = run.bwd[static_cast<size_t>(r)];
    EXPECT_EQ(b.blocks_fetched, r == 0 ? 0 : p.Hkv) << "rank " << r;
    EXPECT_EQ(b.kv_sent, r == 0 ? 0 : p.Hkv * unit_bytes) << "rank " << r;
    EXPECT_EQ(b.kv_received, r == 0 ? (R - 1) * p.Hkv * unit_bytes : 0) << "rank " << r;
  }
  EXPECT_EQ(served_ids(run), (std::set<int32_t>{0, 1}));  // block 0 of kv heads 0 and 1
}

TEST(ContextParallelBackward, DeterministicAcrossRuns) {
  // The owner's sums are in a fixed order, whatever the threads' timing.
  const Problem p{12, 4, 4, 2, 8, 3};
  const auto in = random_inputs<double>(p.whole(), 11);
  const RankRun<double> a = run_ranks(4, p, in);
  for (int i = 0; i < 5; ++i) {
    const RankRun<double> b = run_ranks(4, p, in);
    EXPECT_EQ(first_difference<double>(a.all.dq, b.all.dq), -1);
    EXPECT_EQ(first_difference<double>(a.all.dk, b.all.dk), -1);
    EXPECT_EQ(first_difference<double>(a.all.dv, b.all.dv), -1);
  }
}

TEST(ContextParallelBackward, FloatInputsToo) {
  // float: the fetching rank's partial dk, dv are rounded to float before they travel, so
  // within float rounding of the reference (which rounds once).
  const Problem p{8, 8, 4, 2, 16, 3};
  const auto in = random_inputs<float>(p.whole(), 7);
  const Whole<float> want = reference(p, in);
  for (int R : {2, 4}) {
    const RankRun<float> got = run_ranks(R, p, in);
    EXPECT_EQ(first_difference<float>(got.all.dq, want.dq), -1) << R << " ranks";
    EXPECT_LE(max_abs_diff<float>(got.all.dk, want.dk), 1e-5) << R << " ranks";
    EXPECT_LE(max_abs_diff<float>(got.all.dv, want.dv), 1e-5) << R << " ranks";
  }
}

TEST(ContextParallelBackward, FiniteDifferencesOfTheLoss) {
  // L = sum(out * W) over all ranks; central differences of L in every element of q, k, v
  // against the backward's gradient. The gate is not differentiated: a step this small must
  // not change any rank's selection, which is checked, so the derivative is the
  // attention's for the fixed selection, as the backward computes.
  const Problem p{6, 2, 2, 1, 4, 2};
  const int R = 3;
  Inputs<double> in = random_inputs<double>(p.whole(), 21);
  const RankRun<double> base = run_ranks(R, p, in);
  auto loss = [&](const Inputs<double>& x) {
    const RankRun<double> r = run_ranks(R, p, x, /*backward=*/false);
    for (size_t rank = 0; rank < static_cast<size_t>(R); ++rank)
      EXPECT_EQ(r.saved[rank].sel, base.saved[rank].sel) << "the step changed a selection";
    double l = 0.0;
    for (size_t i = 0; i < x.dout.size(); ++i) l += r.all.out[i] * x.dout[i];
    return l;
  };
  const std::function<double()> at_in = [&] { return loss(in); };
  double worst = cptest::check_central_differences(in.q, base.all.dq, "dq", at_in);
  worst = std::max(worst, cptest::check_central_differences(in.k, base.all.dk, "dk", at_in));
  worst = std::max(worst, cptest::check_central_differences(in.v, base.all.dv, "dv", at_in));
  int64_t fetched = 0;
  for (const auto& t : base.bwd) fetched += t.blocks_fetched;
  EXPECT_GT(fetched, 0);  // the fetched pairs' gradients are among those checked
  std::printf("largest |gradient - central difference|: %.3g\n", worst);
}

TEST(ContextParallelBackward, SequenceNotWholeBlocksPerRankIsAnError) {
  EXPECT_EQ(context_parallel_shard_tokens(48, 3, 4), 16);
  try {
    context_parallel_shard_tokens(20, 2, 4);
    FAIL() << "expected moba::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("a sequence of T = 20 tokens cannot be split over R "
                                         "= 2 ranks in whole blocks of S = 4: T must be a "
                                         "multiple of R x S = 8"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(context_parallel_shard_tokens(12, 0, 4), Error);
  EXPECT_THROW(run_ranks(3, Problem{8, 4, 2, 1, 4, 2}, random_inputs<double>(
                                                           Problem{8, 4, 2, 1, 4, 2}.whole(), 1)),
               Error);  // 32 tokens over 3 ranks
}

// Runs fn on every rank; returns run()'s error message ("" when none).
std::string group_error(int R, const std::function<void(Communicator&)>& fn) {
  FakeGroup group(R);
  try {
    group.run(fn);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Forward on every rank of R, then fn(comm, saved of every rank, buffers of this rank).
struct Shard {
  Layout layout;
  Inputs<double> in;
  std::vector<double> out, lse, dq, dk, dv;
};
std::string backward_error(
    int R, const std::function<void(Communicator&, std::vector<ContextParallelSaved<double>>&,
                                     Shard&)>& fn) {
  std::vector<ContextParallelSaved<double>> saved(static_cast<size_t>(R));
  std::mutex mu;
  return group_error(R, [&](Communicator& c) {
    Shard s{Layout::batched(1, 8, 2, 1, 4), {}, {}, {}, {}, {}, {}};
    s.in = random_inputs<double>(s.layout, static_cast<uint64_t>(c.rank()) + 1);
    s.out.resize(s.layout.q_elems());
    s.lse.resize(s.layout.lse_elems());
    s.dq.resize(s.layout.q_elems());
    s.dk.resize(s.layout.kv_elems());
    s.dv.resize(s.layout.kv_elems());
    moba_forward_context_parallel<double>(c, s.layout, {4, 2}, {}, s.in.q, s.in.k, s.in.v,
                                          s.out, s.lse, &saved[static_cast<size_t>(c.rank())]);
    c.barrier();  // every rank's saved state is filled
    fn(c, saved, s);
  });
}

void backward_of(Communicator& c, const ContextParallelSaved<double>& saved, Shard& s) {
  moba_backward_context_parallel<double>(c, saved, s.in.q, s.in.k, s.in.v, s.out, s.lse,
                                         s.in.dout, s.dq, s.dk, s.dv);
}

TEST(ContextParallelBackward, BadInputIsAClearError) {
  // Buffers that do not match the forward's shard.
  std::string msg = backward_error(2, [](Communicator& c, auto& saved, Shard& s) {
    if (c.rank() == 1) s.dq.pop_back();
    backward_of(c, saved[static_cast<size_t>(c.rank())], s);
  });
  EXPECT_NE(msg.find("rank 1 failed: context parallel backward: dq has 63 elements, but the "
                     "forward's shard of 8 tokens (Hq = 2, Hkv = 1, D = 4) needs T_r x Hq x "
                     "D = 64"),
            std::string::npos)
      << msg;
  msg = backward_error(2, [](Communicator& c, auto& saved, Shard& s) {
    if (c.rank() == 0) s.in.k.resize(s.in.k.size() * 2);  // the whole sequence's k
    backward_of(c, saved[static_cast<size_t>(c.rank())], s);
  });
  EXPECT_NE(msg.find("rank 0 failed: context parallel backward: k has 64 elements, but the "
                     "forward's shard of 8 tokens (Hq = 2, Hkv = 1, D = 4) needs T_r x Hkv x "
                     "D = 32"),
            std::string::npos)
      << msg;
  // Another rank's saved state (on rank 0 only: rank 1, at the all_to_all_v, is released),
  // and none.
  msg = backward_error(2, [](Communicator& c, auto& saved, Shard& s) {
    backward_of(c, saved[1], s);  // rank 1's on both
  });
  EXPECT_NE(msg.find("the saved state is rank 1's of a group of 2, but this is rank 0 of 2"),
            std::string::npos)
      << msg;
  msg = backward_error(2, [](Communicator& c, auto&, Shard& s) {
    backward_of(c, ContextParallelSaved<double>{}, s);
  });
  EXPECT_NE(msg.find("the saved state is empty; pass the ContextParallelSaved that "
                     "moba_forward_context_parallel filled on this rank"),
            std::string::npos)
      << msg;
  // A saved state from a group of another size.
  std::vector<ContextParallelSaved<double>> three(3);
  backward_error(3, [&](Communicator& c, auto& saved, Shard&) {
    three[static_cast<size_t>(c.rank())] = saved[static_cast<size_t>(c.rank())];
  });
  msg = backward_error(2, [&](Communicator& c, auto&, Shard& s) {
    backward_of(c, three[static_cast<size_t>(c.rank())], s);
  });
  EXPECT_NE(msg.find("'s of a group of 3, but this is rank "),
            std::string::npos)
      << msg;
}

}  // namespace
}  // namespace moba::dist
