// MoBA's context-parallel forward (dist/context_parallel.h) over the fake group: the
// sequence split over 1, 2 and 4 ranks against attn::cpu::moba_forward on the whole
// sequence with moba_gate's selection. Bit for bit: every rank runs the reference's own
// gate and row arithmetic (block_means, moba_gate_part, attend_row) on the same values in
// the same order, so no rounding differs. Also: the K/V blocks each rank fetches and serves
// are exactly those its queries selected on other ranks, and the errors (shards that are
// not whole blocks or differ, ranks that disagree, a rank that throws) reach every rank.
#include "dist/context_parallel.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
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
using namespace std::chrono_literals;

using cptest::Inputs;
using cptest::Problem;
using cptest::random_inputs;

template <typename Real>
struct RankResult {
  std::vector<Real> out, lse;
  ContextParallelTraffic traffic;
};

// Rank r gets rows [r T_r, (r + 1) T_r) of the whole sequence's tensors.
template <typename Real>
std::vector<RankResult<Real>> run_ranks(int R, const Problem& p, const Inputs<Real>& in,
                                        const Options& opt = {}) {
  const int64_t T_r = p.blocks * p.S / R;
  const Layout shard = Layout::batched(1, T_r, p.Hq, p.Hkv, p.D);
  std::vector<RankResult<Real>> res(static_cast<size_t>(R));
  FakeGroup group(R);
  group.run([&](Communicator& c) {
    const size_t r = static_cast<size_t>(c.rank());
    auto rows = [&](const std::vector<Real>& x, int64_t heads) {
      const size_t n = static_cast<size_t>(T_r * heads * p.D);
      return std::span<const Real>(x).subspan(r * n, n);
    };
    RankResult<Real>& mine = res[r];
    mine.out.assign(shard.q_elems(), Real(0));
    mine.lse.assign(shard.lse_elems(), Real(0));
    mine.traffic = moba_forward_context_parallel<Real>(
        c, shard, p.cfg(), opt, rows(in.q, p.Hq), rows(in.k, p.Hkv), rows(in.v, p.Hkv),
        mine.out, mine.lse);
  });
  return res;
}

// (block, kv head) pairs that rank r's queries selected on other ranks, per the selection
// of the whole sequence.
std::set<std::pair<int32_t, int64_t>> remote_selected(const Selection& sel, const Problem& p,
                                                      int R, int r) {
  const int64_t T_r = p.blocks * p.S / R, per_rank = p.blocks / R;
  std::set<std::pair<int32_t, int64_t>> want;
  for (int64_t t = r * T_r; t < (r + 1) * T_r; ++t)
    for (int64_t h = 0; h < p.Hq; ++h)
      for (int32_t j : sel.at(t, h))
        if (j >= 0 && j / per_rank != r) want.insert({j, h / (p.Hq / p.Hkv)});
  return want;
}

using cptest::first_difference;

// The whole check for one problem, inputs and rank count: returns the per-rank traffic.
template <typename Real>
std::vector<ContextParallelTraffic> check_against_reference(const Problem& p, int R,
                                                            const Inputs<Real>& in) {
  const Layout whole = p.whole();
  const Options opt;
  const Selection sel = attn::moba_gate<Real>(whole, p.cfg(), in.q, in.k);
  std::vector<Real> out(whole.q_elems()), lse(whole.lse_elems());
  attn::cpu::moba_forward<Real>(whole, p.cfg(), sel, opt, in.q, in.k, in.v, out, lse);

  const std::vector<RankResult<Real>> res = run_ranks<Real>(R, p, in);
  const int64_t T_r = p.blocks * p.S / R;
  const size_t q_rows = static_cast<size_t>(T_r * p.Hq * p.D);
  const size_t l_rows = static_cast<size_t>(T_r * p.Hq);
  const size_t unit_bytes = static_cast<size_t>(2 * p.S * p.D) * sizeof(Real);
  std::vector<int64_t> served(static_cast<size_t>(R), 0);  // predicted, per owner
  std::vector<ContextParallelTraffic> traffic;
  for (int r = 0; r < R; ++r) {
    SCOPED_TRACE("rank " + std::to_string(r));
    const RankResult<Real>& got = res[static_cast<size_t>(r)];
    const size_t rz = static_cast<size_t>(r);
    const std::span<const Real> want_out(out.data() + rz * q_rows, q_rows);
    const std::span<const Real> want_lse(lse.data() + rz * l_rows, l_rows);
    EXPECT_EQ(first_difference<Real>(got.out, want_out), -1);
    EXPECT_EQ(first_difference<Real>(got.lse, want_lse), -1);
    const auto want = remote_selected(sel, p, R, r);
    for (const auto& [j, kvh] : want) ++served[static_cast<size_t>(j / (p.blocks / R))];
    EXPECT_EQ(got.traffic.blocks_fetched, static_cast<int64_t>(want.size()));
    EXPECT_EQ(got.traffic.kv_received, want.size() * unit_bytes);
    EXPECT_EQ(got.traffic.means_received,
              static_cast<size_t>((R - 1) * (p.blocks / R) * p.Hkv * p.D) * sizeof(float));
    EXPECT_EQ(got.traffic.means_sent, got.traffic.means_received);
    traffic.push_back(got.traffic);
  }
  size_t control_sent = 0, control_received = 0;
  for (size_t r = 0; r < static_cast<size_t>(R); ++r) {
    EXPECT_EQ(traffic[r].blocks_served, served[r]) << "rank " << r;
    EXPECT_EQ(traffic[r].kv_sent, static_cast<size_t>(served[r]) * unit_bytes) << "rank " << r;
    control_sent += traffic[r].control_sent;
    control_received += traffic[r].control_received;
  }
  EXPECT_EQ(control_sent, control_received);
  return traffic;
}

TEST(ContextParallel, EqualsTheWholeSequenceBitForBit) {
  int64_t fetched_any = 0;
  for (uint64_t seed : {1u, 2u, 3u})
    for (auto [Hq, Hkv] : {std::pair<int64_t, int64_t>{2, 2}, {4, 2}, {3, 1}})
      for (int64_t K : {1, 2, 3})
        for (int64_t blocks : {8, 16}) {
          const Problem p{blocks, 4, Hq, Hkv, 8, K};
          const auto in = random_inputs<double>(p.whole(), seed * 100 + static_cast<uint64_t>(K));
          for (int R : {1, 2, 4}) {
            SCOPED_TRACE("seed " + std::to_string(seed) + ", Hq " + std::to_string(Hq) +
                         ", Hkv " + std::to_string(Hkv) + ", K " + std::to_string(K) + ", " +
                         std::to_string(blocks) + " blocks, " + std::to_string(R) + " ranks");
            for (const ContextParallelTraffic& t : check_against_reference<double>(p, R, in)) {
              fetched_any += t.blocks_fetched;
              if (R == 1 || K == 1) {
                EXPECT_EQ(t.blocks_fetched, 0);  // nothing is remote
              }
            }
          }
        }
  EXPECT_GT(fetched_any, 0);  // the block fetch did run
}

TEST(ContextParallel, FloatInputsToo) {
  const Problem p{8, 8, 4, 2, 16, 3};
  for (int R : {2, 4}) check_against_reference<float>(p, R, random_inputs<float>(p.whole(), 7));
}

TEST(ContextParallel, FetchesOnlyTheSelectedBlocks) {
  // Every query points along (1, ..., 1) and block 0's keys do too: every query that scores
  // picks block 0 (K = 2), so each rank but 0 fetches block 0 of each kv head and nothing
  // else, although 3 of 4 ranks have past blocks elsewhere.
  const Problem p{16, 4, 4, 2, 8, 2};
  auto in = random_inputs<double>(p.whole(), 5);
  for (double& x : in.q) x = 1.0 + 0.01 * x;
  for (double& x : in.k) x *= 0.1;
  for (size_t i = 0; i < static_cast<size_t>(p.S * p.Hkv * p.D); ++i) in.k[i] += 1.0;
  const int R = 4;
  const auto traffic = check_against_reference<double>(p, R, in);
  for (int r = 0; r < R; ++r) {
    const ContextParallelTraffic& t = traffic[static_cast<size_t>(r)];
    EXPECT_EQ(t.blocks_fetched, r == 0 ? 0 : p.Hkv) << "rank " << r;
    EXPECT_EQ(t.blocks_served, r == 0 ? (R - 1) * p.Hkv : 0) << "rank " << r;
  }
}

TEST(ContextParallel, TiedScoresGoToTheMoreRecentBlock) {
  // Every key equal: every block has the same mean, every score ties, and each query
  // selects the K - 1 blocks just before its own. Rank r fetches the last two blocks of
  // rank r - 1 (per kv head) and nothing else.
  const Problem p{16, 4, 2, 2, 8, 3};
  auto in = random_inputs<double>(p.whole(), 9);
  for (int64_t t = 1; t < p.blocks * p.S; ++t)
    std::copy_n(in.k.begin(), p.Hkv * p.D, in.k.begin() + t * p.Hkv * p.D);
  const int R = 4;
  const auto traffic = check_against_reference<double>(p, R, in);
  for (int r = 0; r < R; ++r)
    EXPECT_EQ(traffic[static_cast<size_t>(r)].blocks_fetched, r == 0 ? 0 : 2 * p.Hkv) << r;
}

using cptest::Failure;
using cptest::run_failing;

// Rank r calls the forward on a shard of tokens[r] tokens with top-k topk[r], random data.
void call_with(Communicator& c, const std::vector<int64_t>& tokens,
               const std::vector<int64_t>& topk) {
  const size_t r = static_cast<size_t>(c.rank());
  const Layout shard = Layout::batched(1, tokens[r], 2, 1, 4);
  const auto in = random_inputs<double>(shard, r + 1);
  std::vector<double> out(shard.q_elems()), lse(shard.lse_elems());
  moba_forward_context_parallel<double>(c, shard, {4, topk[r]}, {}, in.q, in.k, in.v, out,
                                        lse);
}

TEST(ContextParallel, ShardNotWholeBlocksIsAnErrorOnEveryRank) {
  // Rank 1's 6 tokens are a block and a half of S = 4: every rank sees it in the header.
  const Failure f = run_failing(2, [](Communicator& c) { call_with(c, {8, 6}, {2, 2}); });
  const std::string want =
      "rank 1's shard of 6 tokens is not a whole number of MoBA blocks of S = 4 tokens";
  EXPECT_NE(f.group.find(want), std::string::npos) << f.group;
  for (const std::string& m : f.ranks) EXPECT_NE(m.find(want), std::string::npos) << m;
}

TEST(ContextParallel, ShardsOfDifferentLengthsAreAnError) {
  const Failure f = run_failing(2, [](Communicator& c) { call_with(c, {8, 12}, {2, 2}); });
  EXPECT_NE(f.group.find("the shards differ in length: rank 0 holds 8 tokens, rank 1 holds 12"),
            std::string::npos)
      << f.group;
}

TEST(ContextParallel, RanksThatDisagreeOnTopKAreAnError) {
  const Failure f = run_failing(3, [](Communicator& c) { call_with(c, {8, 8, 8}, {3, 3, 2}); });
  EXPECT_NE(f.group.find("disagree on the top-k K: rank 0 has 3, rank 2 has 2"),
            std::string::npos)
      << f.group;
  for (const std::string& m : f.ranks) EXPECT_NE(m.find("top-k K"), std::string::npos) << m;
}

TEST(ContextParallel, RankThatThrowsIsAnErrorNotAHang) {
  // Rank 2's queries hold a NaN: its gate throws after the means' all-gather, while the
  // others wait at the next collective. The group's timeout is long: they must be released
  // by the failure.
  const Problem p{8, 4, 2, 1, 4, 2};
  auto in = random_inputs<double>(p.whole(), 3);
  const int64_t bad_token = 5 * p.S + 1;  // rank 2's second block: past blocks are scored
  in.q[static_cast<size_t>(bad_token * p.Hq * p.D)] = std::numeric_limits<double>::quiet_NaN();
  const auto t0 = std::chrono::steady_clock::now();
  try {
    run_ranks<double>(4, p, in);
    FAIL() << "expected moba::Error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("rank 2 failed: MoBA gate score is not finite"), std::string::npos) << msg;
    EXPECT_NE(msg.find("at token " + std::to_string(bad_token)), std::string::npos) << msg;
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 10s);

  // A rank whose buffers are the wrong size throws before any collective.
  const Failure f = run_failing(2, [](Communicator& c) {
    const Layout shard = Layout::batched(1, 8, 2, 1, 4);
    const auto in = random_inputs<double>(shard, 1);
    std::vector<double> out(shard.q_elems() - (c.rank() == 1 ? 1 : 0)), lse(shard.lse_elems());
    moba_forward_context_parallel<double>(c, shard, {4, 2}, {}, in.q, in.k, in.v, out, lse);
  });
  EXPECT_NE(f.group.find("rank 1 failed: tensor out has 63 elements"), std::string::npos)
      << f.group;
}

}  // namespace
}  // namespace moba::dist
