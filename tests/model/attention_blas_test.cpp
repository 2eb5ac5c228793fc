// The trainer's BLAS attention against the plain-loop reference of src/attention, forward
// and backward, dense and MoBA, at awkward sizes: a 1-token sequence, lengths that are not
// multiples of the tile (64 rows) or of the block, top-k beyond the number of blocks, GQA.
#include "model/attention_blas.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "attention/attention_cpu.h"
#include "core/random.h"

namespace moba::model {
namespace {

struct Case {
  std::vector<int64_t> cu;
  int64_t Hq, Hkv, D, S, K;
  bool moba;
};

// Max |a - b| relative to max |b|.
template <typename Real>
double rel_err(const std::vector<Real>& a, const std::vector<Real>& b) {
  double err = 0.0, scale = 1e-30;
  for (size_t i = 0; i < a.size(); ++i) {
    err = std::max(err, std::abs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  }
  return err / scale;
}

template <typename Real>
void check(const Case& c, double tol) {
  const attn::Layout l = attn::Layout::varlen(c.cu, c.Hq, c.Hkv, c.D);
  const attn::MobaConfig mc{c.S, c.K};
  const attn::Options opt;
  const double scale = opt.scale_for(l);
  const auto q = random_normal<Real>(l.q_elems(), 1), k = random_normal<Real>(l.kv_elems(), 2);
  const auto v = random_normal<Real>(l.kv_elems(), 3), dout = random_normal<Real>(l.q_elems(), 4);
  const attn::Selection sel = attn::moba_gate<Real>(l, mc, q, k);
  std::vector<Real> o_ref(l.q_elems()), lse_ref(l.lse_elems()), dq_ref(l.q_elems()),
      dk_ref(l.kv_elems()), dv_ref(l.kv_elems());
  if (c.moba) {
    attn::cpu::moba_forward<Real>(l, mc, sel, opt, q, k, v, o_ref, lse_ref);
    attn::cpu::moba_backward<Real>(l, mc, sel, opt, q, k, v, o_ref, lse_ref, dout, dq_ref, dk_ref,
                                   dv_ref);
  } else {
    attn::cpu::dense_forward<Real>(l, opt, q, k, v, o_ref, lse_ref);
    attn::cpu::dense_backward<Real>(l, opt, q, k, v, o_ref, lse_ref, dout, dq_ref, dk_ref, dv_ref);
  }
  // Poisoned outputs: every element must be written.
  const Real nan = std::numeric_limits<Real>::quiet_NaN();
  std::vector<Real> o(l.q_elems(), nan), lse(l.lse_elems(), nan), dq(l.q_elems(), nan),
      dk(l.kv_elems(), nan), dv(l.kv_elems(), nan);
  const attn::Selection* s = c.moba ? &sel : nullptr;
  attention_blas_forward<Real>(l, s, c.S, scale, q.data(), k.data(), v.data(), o.data(),
                               lse.data());
  attention_blas_backward<Real>(l, s, c.S, scale, q.data(), k.data(), v.data(), o.data(),
                                lse.data(), dout.data(), dq.data(), dk.data(), dv.data());
  EXPECT_LT(rel_err(o, o_ref), tol) << "out";
  EXPECT_LT(rel_err(lse, lse_ref), tol) << "lse";
  EXPECT_LT(rel_err(dq, dq_ref), tol) << "dq";
  EXPECT_LT(rel_err(dk, dk_ref), tol) << "dk";
  EXPECT_LT(rel_err(dv, dv_ref), tol) << "dv";
}

const std::vector<Case> kCases = {
    {{0, 1, 71, 200}, 4, 2, 8, 16, 3, false}, {{0, 1, 71, 200}, 4, 2, 8, 16, 3, true},
    {{0, 130}, 2, 2, 6, 5, 10, true},     // top-k beyond the number of blocks: dense
    {{0, 64, 193}, 6, 2, 4, 7, 2, true},  // GQA 3, blocks not dividing the tile
    {{0, 300}, 1, 1, 16, 32, 3, true},
};

TEST(AttentionBlas, MatchesTheReferenceInDouble) {
  for (const Case& c : kCases) check<double>(c, 1e-12);
}
TEST(AttentionBlas, MatchesTheReferenceInFloat) {
  for (const Case& c : kCases) check<float>(c, 2e-5);
}

}  // namespace
}  // namespace moba::model
