// The CPU reference against an independent brute-force oracle (explicit token masks) at
// awkward sizes, and MoBA against dense attention where they must agree.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "attention/attention_cpu.h"
#include "attention/stats.h"
#include "brute_force.h"
#include "core/random.h"

namespace moba::attn {
namespace {

struct Grads {
  std::vector<double> out, lse, dq, dk, dv;
};

struct Inputs {
  std::vector<double> q, k, v, dout;
};

Inputs random_inputs(const Layout& l, uint64_t seed) {
  return {random_normal<double>(l.q_elems(), seed), random_normal<double>(l.kv_elems(), seed + 1),
          random_normal<double>(l.kv_elems(), seed + 2),
          random_normal<double>(l.q_elems(), seed + 3)};
}

Grads run_dense(const Layout& l, const Options& opt, const Inputs& in) {
  Grads r{std::vector<double>(l.q_elems()), std::vector<double>(l.lse_elems()),
        std::vector<double>(l.q_elems()), std::vector<double>(l.kv_elems()),
        std::vector<double>(l.kv_elems())};
  cpu::dense_forward<double>(l, opt, in.q, in.k, in.v, r.out, r.lse);
  cpu::dense_backward<double>(l, opt, in.q, in.k, in.v, r.out, r.lse, in.dout, r.dq, r.dk, r.dv);
  return r;
}

Grads run_moba(const Layout& l, const MobaConfig& cfg, const Selection& sel, const Options& opt,
             const Inputs& in) {
  Grads r{std::vector<double>(l.q_elems()), std::vector<double>(l.lse_elems()),
        std::vector<double>(l.q_elems()), std::vector<double>(l.kv_elems()),
        std::vector<double>(l.kv_elems())};
  cpu::moba_forward<double>(l, cfg, sel, opt, in.q, in.k, in.v, r.out, r.lse);
  cpu::moba_backward<double>(l, cfg, sel, opt, in.q, in.k, in.v, r.out, r.lse, in.dout, r.dq,
                             r.dk, r.dv);
  return r;
}

void expect_close(const Grads& a, const test::BruteForce& b, double tol) {
  EXPECT_LT(test::max_rel_err(a.out, b.out), tol) << "out";
  EXPECT_LT(test::max_rel_err(a.lse, b.lse), tol) << "lse";
  EXPECT_LT(test::max_rel_err(a.dq, b.dq), tol) << "dq";
  EXPECT_LT(test::max_rel_err(a.dk, b.dk), tol) << "dk";
  EXPECT_LT(test::max_rel_err(a.dv, b.dv), tol) << "dv";
}

// ---- MoBA against the brute-force oracle at awkward sizes ---------------------------

struct Case {
  std::vector<int64_t> cu;  // cu_seqlens
  int64_t Hq, Hkv, D, S, K;
  std::string name;
};

std::vector<Case> awkward_cases() {
  std::vector<Case> cases;
  const int64_t S = 4;
  for (int64_t T : {int64_t{1}, S - 1, S, S + 1, 3 * S + 7})
    for (int64_t K : {1, 2, 3, 8})
      for (int64_t G : {1, 2, 4})
        cases.push_back({{0, T}, 4, 4 / G, 8, S, K,
                         "T" + std::to_string(T) + "_K" + std::to_string(K) + "_G" +
                             std::to_string(G)});
  // Three documents of odd lengths packed in one row (varlen), and a plain batch of two.
  for (int64_t K : {1, 2, 3})
    cases.push_back({{0, 13, 20, 37}, 4, 2, 8, S, K, "varlen3_K" + std::to_string(K)});
  cases.push_back({{0, 19, 38}, 2, 1, 8, S, 2, "batch2_K2"});
  cases.push_back({{0, 45}, 2, 2, 5, 3, 3, "S3_T45_D5"});
  cases.push_back({{0, 30}, 2, 2, 4, 1, 4, "S1_T30"});
  return cases;
}

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class MobaVsBruteForce : public ::testing::TestWithParam<Case> {};

TEST_P(MobaVsBruteForce, OutputsAndGradientsMatch) {
  const Case& c = GetParam();
  const Layout l = Layout::varlen(c.cu, c.Hq, c.Hkv, c.D);
  const MobaConfig cfg{c.S, c.K};
  const Inputs in = random_inputs(l, 1000 + c.cu.back() * 7 + c.K);
  const Options opt{0.0};
  const Selection sel = moba_gate<double>(l, cfg, in.q, in.k);
  const auto mask = test::token_mask(l, c.S, &sel);
  const auto ref = test::brute_force(l, opt.scale_for(l), mask, in.q, in.k, in.v, in.dout);
  expect_close(run_moba(l, cfg, sel, opt, in), ref, 1e-12);
}

INSTANTIATE_TEST_SUITE_P(Awkward, MobaVsBruteForce, ::testing::ValuesIn(awkward_cases()),
                         [](const auto& info) { return info.param.name; });

TEST(DenseVsBruteForce, CausalVarlenGqaWithCustomScale) {
  const Layout l = Layout::varlen({0, 11, 12, 31}, 6, 2, 7);
  const Inputs in = random_inputs(l, 77);
  const Options opt{0.3};
  const auto ref = test::brute_force(l, 0.3, test::token_mask(l, 1, nullptr), in.q, in.k, in.v,
                                     in.dout);
  expect_close(run_dense(l, opt, in), ref, 1e-12);
}

// ---- MoBA with K >= number of blocks is dense causal attention ----------------------

TEST(MobaVsDense, TopKCoveringAllBlocksEqualsDense) {
  for (const Layout& l : {Layout::batched(2, 29, 4, 1, 16), Layout::varlen({0, 8, 41, 64}, 4, 2, 8),
                          Layout::batched(1, 64, 2, 2, 32)}) {
    const int64_t S = 8, K = (l.max_seq_len() + S - 1) / S;  // number of blocks
    const Inputs in = random_inputs(l, 5 + l.tokens());
    for (int64_t k : {K, K + 3}) {
      const MobaConfig cfg{S, k};
      const Selection sel = moba_gate<double>(l, cfg, in.q, in.k);
      const Grads m = run_moba(l, cfg, sel, {}, in), d = run_dense(l, {}, in);
      EXPECT_LT(test::max_rel_err(m.out, d.out), 1e-13);
      EXPECT_LT(test::max_rel_err(m.lse, d.lse), 1e-13);
      EXPECT_LT(test::max_rel_err(m.dq, d.dq), 1e-13);
      EXPECT_LT(test::max_rel_err(m.dk, d.dk), 1e-13);
      EXPECT_LT(test::max_rel_err(m.dv, d.dv), 1e-13);
      EXPECT_DOUBLE_EQ(moba_pairs(l, cfg, sel), dense_pairs(l));
    }
  }
}

TEST(MobaVsDense, SmallTopKDiffersFromDense) {
  // Guards the test above: with fewer blocks than exist, MoBA must not be dense.
  const Layout l = Layout::batched(1, 64, 2, 2, 16);
  const Inputs in = random_inputs(l, 3);
  const MobaConfig cfg{8, 2};
  const Selection sel = moba_gate<double>(l, cfg, in.q, in.k);
  EXPECT_GT(test::max_rel_err(run_moba(l, cfg, sel, {}, in).out, run_dense(l, {}, in).out), 1e-3);
  EXPECT_LT(moba_pairs(l, cfg, sel), dense_pairs(l));
}

TEST(MobaVsDense, FloatMatchesDoubleToSinglePrecision) {
  const Layout l = Layout::batched(1, 50, 2, 1, 16);
  const Inputs in = random_inputs(l, 9);
  const MobaConfig cfg{8, 3};
  const Selection sel = moba_gate<double>(l, cfg, in.q, in.k);
  const Grads ref = run_moba(l, cfg, sel, {}, in);
  std::vector<float> q(in.q.begin(), in.q.end()), k(in.k.begin(), in.k.end()),
      v(in.v.begin(), in.v.end()), dout(in.dout.begin(), in.dout.end());
  std::vector<float> out(l.q_elems()), lse(l.lse_elems()), dq(l.q_elems()), dk(l.kv_elems()),
      dv(l.kv_elems());
  cpu::moba_forward<float>(l, cfg, sel, {}, q, k, v, out, lse);
  cpu::moba_backward<float>(l, cfg, sel, {}, q, k, v, out, lse, dout, dq, dk, dv);
  EXPECT_LT(test::max_rel_err(out, ref.out), 1e-6);
  EXPECT_LT(test::max_rel_err(dq, ref.dq), 1e-5);
  EXPECT_LT(test::max_rel_err(dk, ref.dk), 1e-5);
  EXPECT_LT(test::max_rel_err(dv, ref.dv), 1e-5);
}

TEST(Stats, MobaDensityMatchesCountedPairs) {
  // T = 16, S = 4, K = 2: tokens of block c >= 1 see one full past block (4 keys) plus
  // their causal prefix of the current block; block 0 sees its prefix.
  const Layout l = Layout::batched(1, 16, 1, 1, 4);
  const auto q = random_normal<double>(l.q_elems(), 1);
  const MobaConfig cfg{4, 2};
  const Selection sel = moba_gate<double>(l, cfg, q, q);
  EXPECT_DOUBLE_EQ(moba_pairs(l, cfg, sel), 4 * 10 + 12 * 4.0);
  EXPECT_DOUBLE_EQ(dense_pairs(l), 16 * 17 / 2.0);
}

}  // namespace
}  // namespace moba::attn
