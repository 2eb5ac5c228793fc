// Finite-difference gradient checks in double: loss = sum(out * W) for a random W, central
// differences on every element of q, k and v, for dense and for MoBA (selection fixed).
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "attention/attention_cpu.h"
#include "brute_force.h"
#include "core/random.h"

namespace moba::attn {
namespace {

using Forward = std::function<void(const std::vector<double>& q, const std::vector<double>& k,
                                   const std::vector<double>& v, std::vector<double>& out,
                                   std::vector<double>& lse)>;

double loss(const Forward& fwd, const Layout& l, const std::vector<double>& q,
            const std::vector<double>& k, const std::vector<double>& v,
            const std::vector<double>& w) {
  std::vector<double> out(l.q_elems()), lse(l.lse_elems());
  fwd(q, k, v, out, lse);
  double s = 0.0;
  for (size_t i = 0; i < out.size(); ++i) s += out[i] * w[i];
  return s;
}

// Central difference of the loss with respect to every element of x (one of q, k, v).
std::vector<double> numeric_grad(const std::function<double()>& f, std::vector<double>& x) {
  const double h = 1e-6;
  std::vector<double> g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double up = f();
    x[i] = x0 - h;
    const double down = f();
    x[i] = x0;
    g[i] = (up - down) / (2 * h);
  }
  return g;
}

struct Shape {
  std::vector<int64_t> cu;
  int64_t Hq, Hkv, D, S, K;
};

void PrintTo(const Shape& s, std::ostream* os) {
  *os << "N=" << s.cu.back() << " Hq=" << s.Hq << " Hkv=" << s.Hkv << " D=" << s.D
      << " S=" << s.S << " K=" << s.K;
}

class GradCheck : public ::testing::TestWithParam<Shape> {};

void check(const Layout& l, const Forward& fwd,
           const std::function<void(const std::vector<double>&, const std::vector<double>&,
                                    const std::vector<double>&, const std::vector<double>&,
                                    const std::vector<double>&, const std::vector<double>&,
                                    std::vector<double>&, std::vector<double>&,
                                    std::vector<double>&)>& bwd,
           uint64_t seed) {
  auto q = random_normal<double>(l.q_elems(), seed), k = random_normal<double>(l.kv_elems(), seed + 1);
  auto v = random_normal<double>(l.kv_elems(), seed + 2);
  const auto w = random_normal<double>(l.q_elems(), seed + 3);
  std::vector<double> out(l.q_elems()), lse(l.lse_elems());
  fwd(q, k, v, out, lse);
  std::vector<double> dq(l.q_elems()), dk(l.kv_elems()), dv(l.kv_elems());
  bwd(q, k, v, out, lse, w, dq, dk, dv);
  auto f = [&] { return loss(fwd, l, q, k, v, w); };
  EXPECT_LT(test::max_rel_err(dq, numeric_grad(f, q)), 1e-7) << "dq";
  EXPECT_LT(test::max_rel_err(dk, numeric_grad(f, k)), 1e-7) << "dk";
  EXPECT_LT(test::max_rel_err(dv, numeric_grad(f, v)), 1e-7) << "dv";
}

TEST_P(GradCheck, Dense) {
  const Shape& s = GetParam();
  const Layout l = Layout::varlen(s.cu, s.Hq, s.Hkv, s.D);
  const Options opt{};
  check(
      l,
      [&](const auto& q, const auto& k, const auto& v, auto& out, auto& lse) {
        cpu::dense_forward<double>(l, opt, q, k, v, out, lse);
      },
      [&](const auto& q, const auto& k, const auto& v, const auto& out, const auto& lse,
          const auto& dout, auto& dq, auto& dk, auto& dv) {
        cpu::dense_backward<double>(l, opt, q, k, v, out, lse, dout, dq, dk, dv);
      },
      31);
}

TEST_P(GradCheck, Moba) {
  const Shape& s = GetParam();
  const Layout l = Layout::varlen(s.cu, s.Hq, s.Hkv, s.D);
  const MobaConfig cfg{s.S, s.K};
  const Options opt{};
  // The selection is fixed once: the gate has no gradient (docs/moba.md, step 4).
  const auto q0 = random_normal<double>(l.q_elems(), 31), k0 = random_normal<double>(l.kv_elems(), 32);
  const Selection sel = moba_gate<double>(l, cfg, q0, k0);
  check(
      l,
      [&](const auto& q, const auto& k, const auto& v, auto& out, auto& lse) {
        cpu::moba_forward<double>(l, cfg, sel, opt, q, k, v, out, lse);
      },
      [&](const auto& q, const auto& k, const auto& v, const auto& out, const auto& lse,
          const auto& dout, auto& dq, auto& dk, auto& dv) {
        cpu::moba_backward<double>(l, cfg, sel, opt, q, k, v, out, lse, dout, dq, dk, dv);
      },
      31);
}

INSTANTIATE_TEST_SUITE_P(Shapes, GradCheck,
                         ::testing::Values(Shape{{0, 23}, 2, 1, 4, 4, 2},
                                           Shape{{0, 9, 26}, 4, 2, 3, 3, 3}),
                         [](const auto& info) {
                           return "N" + std::to_string(info.param.cu.back()) + "_Hq" +
                                  std::to_string(info.param.Hq);
                         });

}  // namespace
}  // namespace moba::attn
