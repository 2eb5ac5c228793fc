// The per-row reference of the long-context GPU test (attention_gpu/sampled_reference.h)
// against the whole-tensor CPU reference on a small sequence: out, lse and dq of single
// rows, dK and dV of one block from the queries that attend it (found by scanning the
// selection, as the GPU test does), the block means, and the naive bf16 values against
// naive_bf16.h's. A wrong oracle would otherwise only show on the GPU at 2M tokens.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "attention/attention_cpu.h"
#include "attention/gate.h"
#include "attention_gpu/naive_bf16.h"
#include "attention_gpu/sampled_reference.h"
#include "core/random.h"

namespace moba::test {
namespace {

Bits random_bits(size_t n, uint64_t seed) {
  const std::vector<float> x = random_normal<float>(n, seed);
  Bits b(n);
  for (size_t i = 0; i < n; ++i) b[i] = bf16_bits(x[i]);
  return b;
}

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0.0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

void check_case(bool moba) {
  const int64_t N = 1500, Hq = 4, Hkv = 2, D = 64, S = 128, K = 3, G = Hq / Hkv;
  const attn::Layout l = attn::Layout::batched(1, N, Hq, Hkv, D);
  const attn::MobaConfig cfg{S, K};
  const attn::Options opt;
  const double scale = opt.scale_for(l);
  const Bits bq = random_bits(l.q_elems(), 11), bdo = random_bits(l.q_elems(), 14);
  HostKV kv{random_bits(l.kv_elems(), 12), random_bits(l.kv_elems(), 13), Hkv, D};
  const std::vector<float> q = to_float(bq.data(), bq.size()), k = to_float(kv.k.data(), kv.k.size()),
                           v = to_float(kv.v.data(), kv.v.size()), dout = to_float(bdo.data(), bdo.size());
  const attn::Selection sel = attn::moba_gate<float>(l, cfg, q, k);
  if (moba) {
    EXPECT_EQ(host_block_means(kv, N, S), attn::block_means<float>(l, cfg, k));
  }

  std::vector<double> qd(q.begin(), q.end()), kd(k.begin(), k.end()), vd(v.begin(), v.end()),
      dod(dout.begin(), dout.end());
  std::vector<double> out(q.size()), lse(l.lse_elems()), rdq(q.size()), rdk(k.size()), rdv(v.size());
  if (moba) {
    attn::cpu::moba_forward<double>(l, cfg, sel, opt, qd, kd, vd, out, lse);
    attn::cpu::moba_backward<double>(l, cfg, sel, opt, qd, kd, vd, out, lse, dod, rdq, rdk, rdv);
  } else {
    attn::cpu::dense_forward<double>(l, opt, qd, kd, vd, out, lse);
    attn::cpu::dense_backward<double>(l, opt, qd, kd, vd, out, lse, dod, rdq, rdk, rdv);
  }
  const NaiveResult nv = naive_bf16(l, S, moba ? &sel : nullptr, scale, q, k, v, dout);

  // Rows: every head of sampled tokens.
  const int32_t* slots = nullptr;
  for (int64_t t : sample_tokens(N, S, 9))
    for (int64_t h = 0; h < Hq; ++h) {
      const size_t row = static_cast<size_t>(t * Hq + h);
      if (moba) slots = &sel.blocks[row * K];
      const RowResult r = row_reference(kv, h / G, key_ranges(slots, K, S, t), &q[row * D],
                                        &dout[row * D], scale);
      EXPECT_NEAR(r.lse, lse[row], 1e-12) << "token " << t << " head " << h;
      EXPECT_LE(max_abs_diff(r.out, std::vector<double>(out.begin() + row * D, out.begin() + (row + 1) * D)), 1e-12);
      EXPECT_LE(max_abs_diff(r.dq, std::vector<double>(rdq.begin() + row * D, rdq.begin() + (row + 1) * D)), 1e-12);
      EXPECT_NEAR(r.n_lse, nv.lse[row], 1e-5);
      for (int64_t d = 0; d < D; ++d) {
        EXPECT_NEAR(r.n_out[d], nv.out[row * D + d], 1e-2) << "naive out, token " << t;
        EXPECT_NEAR(r.n_dq[d], nv.dq[row * D + d], 1e-2) << "naive dq, token " << t;
      }
    }

  // dK/dV of block 2 of kv head 1 (MoBA) or of the last 40 keys (dense), from the queries
  // attending them: the block's own queries and those selecting it as a past block.
  const int64_t kvh = 1, k0 = moba ? 2 * S : N - 40, k1 = moba ? 3 * S : N;
  KeyGrads g;
  g.init(k0, k1, kvh, D);
  int64_t users = 0;
  for (int64_t t = k0; t < N; ++t)
    for (int64_t h = kvh * G; h < (kvh + 1) * G; ++h) {
      const size_t row = static_cast<size_t>(t * Hq + h);
      if (moba) {
        slots = &sel.blocks[row * K];
        bool uses = t < k1;
        for (int64_t i = 0; i < K - 1; ++i) uses = uses || slots[i] == 2;
        if (!uses) continue;
      }
      ++users;
      const auto keys = key_ranges(slots, K, S, t);
      const RowResult r = row_reference(kv, kvh, keys, &q[row * D], &dout[row * D], scale);
      add_key_grads(kv, keys, &q[row * D], &dout[row * D], scale, r, g);
    }
  g.finish(scale);
  EXPECT_GT(users, k1 - k0);  // some queries past the block (MoBA: selected it)
  for (int64_t j = k0; j < k1; ++j)
    for (int64_t d = 0; d < D; ++d) {
      const size_t at = static_cast<size_t>((j * Hkv + kvh) * D + d), r = static_cast<size_t>((j - k0) * D + d);
      ASSERT_NEAR(g.dk[r], rdk[at], 1e-11) << "dk key " << j;
      ASSERT_NEAR(g.dv[r], rdv[at], 1e-11) << "dv key " << j;
      ASSERT_NEAR(g.n_dk[r], nv.dk[at], 2e-2) << "naive dk key " << j;
      ASSERT_NEAR(g.n_dv[r], nv.dv[at], 2e-2) << "naive dv key " << j;
    }
}

TEST(SampledReference, MobaRowsAndKeyGradsMatchTheCpuReference) { check_case(true); }
TEST(SampledReference, DenseRowsAndKeyGradsMatchTheCpuReference) { check_case(false); }

TEST(SampledReference, SampleTokensSpreadToTheEnd) {
  const std::vector<int64_t> t = sample_tokens(2097152, 512, 56);
  ASSERT_GE(t.size(), 60u);
  EXPECT_EQ(t.front(), 0);
  EXPECT_EQ(t.back(), 2097151);
  EXPECT_EQ(t[t.size() - 4], 2097148);
  EXPECT_TRUE(std::is_sorted(t.begin(), t.end()));
}

}  // namespace
}  // namespace moba::test
