// The gate on hand-built inputs whose expected selection is known, including ties.
#include <gtest/gtest.h>

#include <vector>

#include "attention/gate.h"
#include "core/error.h"
#include "core/random.h"

namespace moba::attn {
namespace {

using Blocks = std::vector<int32_t>;

Blocks slots(const Selection& s, int64_t tok, int64_t h) {
  auto sp = s.at(tok, h);
  return Blocks(sp.begin(), sp.end());
}

// D = 2, one kv head; every key of block j is (key_of_block[j], 0) plus a zero-mean
// wobble (+w, -w alternate within the block), so block means are exactly (m_j, 0).
std::vector<double> keys_with_means(const std::vector<double>& key_of_block, int64_t S,
                                    int64_t T) {
  std::vector<double> k(static_cast<size_t>(T * 2));
  for (int64_t t = 0; t < T; ++t) {
    const int64_t j = t / S;
    const double wobble = (S % 2 == 0) ? ((t % 2) ? -0.25 : 0.25) : 0.0;
    k[t * 2 + 0] = key_of_block[j] + wobble;
    k[t * 2 + 1] = 0.5 * static_cast<double>(t % 3);  // q's second component is 0
  }
  return k;
}

TEST(Gate, PicksHighestScoringPastBlocksPlusCurrent) {
  const int64_t S = 2, T = 10;  // blocks 0..4
  const Layout l = Layout::batched(1, T, 1, 1, 2);
  const auto k = keys_with_means({1.0, 3.0, 2.0, -1.0, 0.5}, S, T);
  std::vector<double> q(T * 2);
  for (int64_t t = 0; t < T; ++t) q[t * 2] = 1.0, q[t * 2 + 1] = 0.0;
  const Selection s2 = moba_gate<double>(l, {S, 2}, q, k);
  EXPECT_EQ(slots(s2, 9, 0), (Blocks{1, 4}));  // scores 1, 3, 2, -1 -> best is block 1
  EXPECT_EQ(slots(s2, 7, 0), (Blocks{1, 3}));
  EXPECT_EQ(slots(s2, 3, 0), (Blocks{0, 1}));  // c = 1 <= K - 1: all blocks
  EXPECT_EQ(slots(s2, 1, 0), (Blocks{0, -1}));
  const Selection s3 = moba_gate<double>(l, {S, 3}, q, k);
  EXPECT_EQ(slots(s3, 9, 0), (Blocks{1, 2, 4}));
  EXPECT_EQ(slots(s3, 5, 0), (Blocks{0, 1, 2}));
  const Selection s1 = moba_gate<double>(l, {S, 1}, q, k);
  for (int64_t t = 0; t < T; ++t) EXPECT_EQ(slots(s1, t, 0), (Blocks{static_cast<int32_t>(t / S)}));
  // A negative query reverses the order of preference.
  for (int64_t t = 0; t < T; ++t) q[t * 2] = -1.0;
  const Selection neg = moba_gate<double>(l, {S, 2}, q, k);
  EXPECT_EQ(slots(neg, 9, 0), (Blocks{3, 4}));
}

TEST(Gate, TiesGoToTheMoreRecentBlock) {
  const int64_t S = 2, T = 10;
  const Layout l = Layout::batched(1, T, 1, 1, 2);
  const auto k = keys_with_means({2.0, 2.0, 1.0, 2.0, 0.0}, S, T);
  std::vector<double> q(T * 2, 0.0);
  for (int64_t t = 0; t < T; ++t) q[t * 2] = 1.0;
  // Token 8 (block 4): blocks 0, 1, 3 tie at 2. K=2 takes 3; K=3 takes 3 and 1.
  EXPECT_EQ(slots(moba_gate<double>(l, {S, 2}, q, k), 8, 0), (Blocks{3, 4}));
  EXPECT_EQ(slots(moba_gate<double>(l, {S, 3}, q, k), 8, 0), (Blocks{1, 3, 4}));
  // Token 6 (block 3): blocks 0 and 1 tie; the more recent, 1, wins.
  EXPECT_EQ(slots(moba_gate<double>(l, {S, 2}, q, k), 6, 0), (Blocks{1, 3}));
  // An all-zero query ties every block: the most recent ones are chosen.
  std::vector<double> zero_q(T * 2, 0.0);
  EXPECT_EQ(slots(moba_gate<double>(l, {S, 3}, zero_q, k), 9, 0), (Blocks{2, 3, 4}));
}

TEST(Gate, PartialLastBlockIsOnlyEverCurrent) {
  const int64_t S = 3, T = 8;  // blocks [0,3) [3,6) [6,8): block 2 is partial
  const Layout l = Layout::batched(1, T, 1, 1, 2);
  const auto k = keys_with_means({-5.0, 4.0, 100.0}, S, T);
  std::vector<double> q(T * 2, 0.0);
  for (int64_t t = 0; t < T; ++t) q[t * 2] = 1.0;
  const Selection s = moba_gate<double>(l, {S, 2}, q, k);
  EXPECT_EQ(slots(s, 7, 0), (Blocks{1, 2}));
  EXPECT_EQ(slots(s, 6, 0), (Blocks{1, 2}));
  EXPECT_EQ(slots(s, 5, 0), (Blocks{0, 1}));
}

TEST(Gate, BlocksRestartAtEachDocument) {
  const int64_t S = 2;
  // Documents of 5 and 7 tokens; doc 1's blocks are at packed [5,7) [7,9) [9,11) [11,12).
  const Layout l = Layout::varlen({0, 5, 12}, 1, 1, 2);
  std::vector<double> k = keys_with_means({9.0, 9.0, 9.0}, S, 5);
  const auto k1 = keys_with_means({1.0, 7.0, 3.0, 0.0}, S, 7);
  k.insert(k.end(), k1.begin(), k1.end());
  std::vector<double> q(12 * 2, 0.0);
  for (int64_t t = 0; t < 12; ++t) q[t * 2] = 1.0;
  const Selection s = moba_gate<double>(l, {S, 2}, q, k);
  EXPECT_EQ(slots(s, 11, 0), (Blocks{1, 3}));  // local block 3 of doc 1; best past is 1
  EXPECT_EQ(slots(s, 10, 0), (Blocks{1, 2}));
  EXPECT_EQ(slots(s, 5, 0), (Blocks{0, -1}));  // first token of doc 1: its own block 0
  EXPECT_EQ(full_block_offset(l, {S, 2}, 1), 2);
}

TEST(Gate, EachQueryHeadSelectsItsOwnBlocks) {
  const int64_t S = 2, T = 8;
  const Layout l = Layout::batched(1, T, 2, 1, 2);  // two query heads share one kv head
  const auto k = keys_with_means({1.0, -1.0, 0.0, 0.0}, S, T);
  std::vector<double> q(T * 2 * 2, 0.0);
  for (int64_t t = 0; t < T; ++t) q[(t * 2 + 0) * 2] = 1.0, q[(t * 2 + 1) * 2] = -1.0;
  const Selection s = moba_gate<double>(l, {S, 2}, q, k);
  EXPECT_EQ(slots(s, 7, 0), (Blocks{0, 3}));
  EXPECT_EQ(slots(s, 7, 1), (Blocks{1, 3}));
}

TEST(Gate, FloatAndDoubleInputsSelectAlike) {
  const Layout l = Layout::varlen({0, 37, 100, 129}, 4, 2, 16);
  auto qd = random_normal<double>(l.q_elems(), 11), kd = random_normal<double>(l.kv_elems(), 12);
  std::vector<float> qf(qd.begin(), qd.end()), kf(kd.begin(), kd.end());
  for (size_t i = 0; i < qd.size(); ++i) qd[i] = qf[i];  // same values in both precisions
  for (size_t i = 0; i < kd.size(); ++i) kd[i] = kf[i];
  const MobaConfig cfg{8, 3};
  EXPECT_EQ(moba_gate<float>(l, cfg, qf, kf).blocks, moba_gate<double>(l, cfg, qd, kd).blocks);
}

TEST(Gate, NaNInputIsAnError) {
  const Layout l = Layout::batched(1, 16, 1, 1, 4);
  auto q = random_normal<float>(l.q_elems(), 1), k = random_normal<float>(l.kv_elems(), 2);
  q[15 * 4 + 2] = std::numeric_limits<float>::quiet_NaN();
  try {
    moba_gate<float>(l, {4, 2}, q, k);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("token 15"), std::string::npos) << e.what();
  }
}

// v21's default (MOBA_GATE_ROWS unset or auto): 256 query rows a gate CTA where K <= 5 and
// the 128-row grid (heads x 128-token tiles of the longest sequence x batch) has at least
// kGateTwoTileCtas CTAs; the shapes of the H200 A/B (docs/kernel_notes.md, session 25).
TEST(Gate, RowsAutoFollowsTheMeasuredShapes) {
  EXPECT_EQ(gate_rows_auto(8192, 16, 1, 3), 128);     // 1024 CTAs: 256 rows were 2% slower
  EXPECT_EQ(gate_rows_auto(8192, 12, 1, 3), 128);     // 768: 4% slower
  EXPECT_EQ(gate_rows_auto(32768, 12, 1, 3), 128);    // 3072: within 0.5%
  EXPECT_EQ(gate_rows_auto(32768, 16, 1, 3), 256);    // 4096: 2% faster
  EXPECT_EQ(gate_rows_auto(131072, 12, 1, 3), 256);   // 4% faster
  EXPECT_EQ(gate_rows_auto(1 << 20, 16, 1, 3), 256);  // 13% faster
  EXPECT_EQ(gate_rows_auto(8192, 16, 4, 3), 256);     // the batch counts: 4096 CTAs
  EXPECT_EQ(gate_rows_auto(32767, 16, 1, 3), 256);    // a partial last tile is a CTA
  EXPECT_EQ(gate_rows_auto(32640, 16, 1, 3), 128);    // 255 tiles x 16 = 4080
  EXPECT_EQ(gate_rows_auto(1 << 20, 16, 1, 5), 256);  // the longest list with two m-tiles
  EXPECT_EQ(gate_rows_auto(1 << 20, 16, 1, 6), 128);  // K > 5 has no two-tile instance
  EXPECT_EQ(gate_rows_auto(1 << 20, 16, 1, 12), 128);
}

}  // namespace
}  // namespace moba::attn
