// The CUDA decode kernels (attention/cuda/decode_cuda.h) against the CPU reference
// (attention/decode.h, in double) on fresh random bf16 caches: several sequences of
// different lengths per batch (one token, lengths on and across block ends, up to 64K),
// prefill through fill() then a few append() steps, GQA 1:1, 4:1, 8:1 and 32:1 (two head
// tiles), D 64 and 128, S 64 to 512 (and 96, not a power of two), K 1 to 8.
//   - cache: K/V rows and every full block's mean bit-equal to the CPU KVCache's;
//   - out, lse: error against the fp64 reference at most twice that of a naive bf16 decode
//     (naive_bf16.h's convention: float scores, P rounded to bf16, out rounded to bf16) plus
//     1e-5, the bound of every bf16 kernel in this project;
//   - selection equal to the CPU gate's, except on rounding ties of the fp32 scores (the GPU
//     sums the D products in double in another order); out/lse of such rows are compared
//     only when the selections agree.
// Skips (passes) with a message when no CUDA device is present.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "attention/brute_force.h"
#include "attention/cuda/attention_cuda.h"  // fill_random_bf16
#include "attention/cuda/decode_cuda.h"
#include "attention/decode.h"
#include "attention_gpu/bf16_vectors.h"
#include "attention_gpu/device_buffer.h"
#include "attention_gpu/naive_bf16.h"
#include "core/cuda_check.cuh"
#include "core/error.h"
#include "core/random.h"

namespace moba::test {
namespace {

using attn::KVCache;
using attn::MobaConfig;
namespace acu = attn::cuda;



double bound_for(double naive_err) { return 2.0 * naive_err + 1e-5; }

struct Case {
  const char* name;
  std::vector<int64_t> lens;  // final lengths: a prefill of lens - appends rows, then appends steps
  int64_t appends;
  int64_t Hq, Hkv, D, S, K;  // K = 0: dense
  int64_t capacity;
};

// Rows [0, len) of each sequence's keys of one kv head: dense all, MoBA the selected blocks.
void rows_of(const std::vector<int32_t>* sel, int64_t K, int64_t S, int64_t len, int64_t bh,
             std::vector<std::pair<int64_t, int64_t>>& out) {
  out.clear();
  if (!sel) {
    out.push_back({0, len});
    return;
  }
  for (int64_t i = 0; i < K; ++i) {
    const int32_t j = (*sel)[bh * K + i];
    if (j >= 0) out.push_back({j * S, std::min((j + 1) * S, len)});
  }
}

class DecodeGpu : public ::testing::TestWithParam<Case> {};

TEST_P(DecodeGpu, MatchesReference) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device: GPU decode tests skipped";
  const Case& cs = GetParam();
  const int64_t B = static_cast<int64_t>(cs.lens.size()), Hq = cs.Hq, Hkv = cs.Hkv, D = cs.D;
  const int64_t S = cs.S, T = cs.capacity, G = Hq / Hkv, A = cs.appends;
  const bool moba = cs.K > 0;
  const MobaConfig cfg{S, moba ? cs.K : 1};
  const attn::Options opt;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  static uint64_t seed = 4321;
  seed += 101;
  const int64_t row = Hkv * D;

  // Prefill (packed) and the rows of each append step, bf16-valued.
  std::vector<int64_t> cu{0};
  for (int64_t L : cs.lens) cu.push_back(cu.back() + L - A);
  const auto pk = bf16_normal(static_cast<size_t>(cu.back() * row), seed);
  const auto pv = bf16_normal(static_cast<size_t>(cu.back() * row), seed + 1);
  std::vector<std::vector<float>> ak, av;
  for (int64_t a = 0; a < A; ++a) {
    ak.push_back(bf16_normal(static_cast<size_t>(B * row), seed + 10 + 2 * a));
    av.push_back(bf16_normal(static_cast<size_t>(B * row), seed + 11 + 2 * a));
  }
  const auto q = bf16_normal(static_cast<size_t>(B * Hq * D), seed + 2);

  // CPU reference cache, in double, the same values in the same order.
  KVCache<double> ref(B, T, Hkv, D, S);
  for (int64_t b = 0; b < B; ++b) {
    const size_t o = static_cast<size_t>(cu[b] * row), n = static_cast<size_t>((cu[b + 1] - cu[b]) * row);
    std::vector<double> kr(pk.begin() + o, pk.begin() + o + n), vr(pv.begin() + o, pv.begin() + o + n);
    ref.append(b, cu[b + 1] - cu[b], kr, vr);
  }
  for (int64_t a = 0; a < A; ++a)
    for (int64_t b = 0; b < B; ++b) {
      std::vector<double> kr(ak[a].begin() + b * row, ak[a].begin() + (b + 1) * row);
      std::vector<double> vr(av[a].begin() + b * row, av[a].begin() + (b + 1) * row);
      ref.append(b, 1, kr, vr);
    }

  // GPU cache: fill, then the appends.
  acu::DecodeCache cache(B, T, Hkv, D, S);
  {
    DeviceBuffer<acu::bf16> dk(pk.size()), dv(pv.size());
    dk.upload(to_bf16(pk));
    dv.upload(to_bf16(pv));
    cache.fill(cu, dk.ptr, dv.ptr);
    DeviceBuffer<acu::bf16> nk(static_cast<size_t>(B * row)), nv(static_cast<size_t>(B * row));
    for (int64_t a = 0; a < A; ++a) {
      nk.upload(to_bf16(ak[a]));
      nv.upload(to_bf16(av[a]));
      cache.append(nk.ptr, nv.ptr);
    }
    CUDA_CHECK(cudaDeviceSynchronize());
  }
  for (int64_t b = 0; b < B; ++b) ASSERT_EQ(cache.len()[b], cs.lens[b]);
  std::vector<int32_t> len_dev(static_cast<size_t>(B));
  CUDA_CHECK(cudaMemcpy(len_dev.data(), cache.len_dev(), sizeof(int32_t) * B, cudaMemcpyDeviceToHost));
  for (int64_t b = 0; b < B; ++b) ASSERT_EQ(len_dev[b], cs.lens[b]) << "device length of sequence " << b;

  // Cache contents: rows and means bit-equal to the CPU cache.
  {
    const size_t kv = static_cast<size_t>(B * T * row);
    std::vector<acu::bf16> hk(kv), hv(kv);
    CUDA_CHECK(cudaMemcpy(hk.data(), cache.k(), sizeof(acu::bf16) * kv, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(hv.data(), cache.v(), sizeof(acu::bf16) * kv, cudaMemcpyDeviceToHost));
    const auto fk = from_bf16(hk), fv = from_bf16(hv);
    const size_t nm = static_cast<size_t>(B * (T / S) * row);
    std::vector<float> hm(nm);
    CUDA_CHECK(cudaMemcpy(hm.data(), cache.means(), sizeof(float) * nm, cudaMemcpyDeviceToHost));
    int64_t bad_rows = 0, bad_means = 0, blocks = 0;
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t t = 0; t < cs.lens[b]; ++t)
        for (int64_t i = 0; i < row; ++i) {
          const size_t o = static_cast<size_t>((b * T + t) * row + i);
          if (fk[o] != ref.k(b, t)[i] || fv[o] != ref.v(b, t)[i]) ++bad_rows;
        }
      for (int64_t j = 0; j < ref.full_blocks(b); ++j, ++blocks)
        for (int64_t i = 0; i < row; ++i)
          if (hm[static_cast<size_t>((b * (T / S) + j) * row + i)] != ref.mean(b, j)[i]) ++bad_means;
    }
    EXPECT_EQ(bad_rows, 0) << "K/V elements differing from the CPU cache";
    EXPECT_EQ(bad_means, 0) << "block-mean elements differing from the CPU cache (" << blocks
                            << " full blocks)";
  }

  // Decode on the GPU (outputs poisoned first), and on the CPU in double.
  acu::DecodePlan plan(B, T, Hq, Hkv, D, cfg, opt);
  DeviceBuffer<acu::bf16> dq(q.size()), dout(q.size());
  DeviceBuffer<float> dlse(static_cast<size_t>(B * Hq));
  DeviceBuffer<int32_t> dsel(static_cast<size_t>(B * Hq * cfg.top_k));
  dq.upload(to_bf16(q));
  dout.poison();
  dlse.poison();
  dsel.poison();
  if (moba) acu::decode_moba(plan, cache, dq.ptr, dout.ptr, dlse.ptr, dsel.ptr);
  else acu::decode_dense(plan, cache, dq.ptr, dout.ptr, dlse.ptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  const auto gout = from_bf16(dout.download());
  const auto glse = dlse.download();

  const std::vector<double> qd(q.begin(), q.end());
  std::vector<double> rout(q.size()), rlse(static_cast<size_t>(B * Hq));
  std::vector<int32_t> rsel;
  if (moba) attn::decode_moba<double>(ref, Hq, cfg, opt, qd, rout, rlse, &rsel);
  else attn::decode_dense<double>(ref, Hq, opt, qd, rout, rlse);

  // Selection: equal, or a rounding tie of the fp32 scores.
  std::vector<char> same(static_cast<size_t>(B * Hq), 1);
  if (moba) {
    const auto gsel = dsel.download();
    const int64_t K = cfg.top_k;
    int64_t differ = 0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < Hq; ++h) {
        const int64_t bh = b * Hq + h;
        const int32_t* a = &gsel[bh * K];
        const int32_t* c = &rsel[bh * K];
        if (std::equal(a, a + K, c)) continue;
        same[bh] = 0;
        ++differ;
        // Both lists must hold the same current block and the same number of slots, and the
        // GPU's picks must score no lower than the CPU's worst pick but for rounding.
        const int64_t cur = (cs.lens[b] - 1) / S;
        auto score = [&](int32_t j, double* mag) {
          const float* m = ref.mean(b, j) + (h / G) * D;
          double s = 0.0, a2 = 0.0;
          for (int64_t d = 0; d < D; ++d) {
            s += qd[bh * D + d] * m[d];
            a2 += std::abs(qd[bh * D + d] * m[d]);
          }
          *mag = a2;
          return s;
        };
        double worst = INFINITY, mag = 0.0;
        int n_gpu = 0, n_cpu = 0;
        for (int64_t i = 0; i < K; ++i) {
          if (c[i] >= 0 && c[i] != cur) worst = std::min(worst, score(c[i], &mag)), ++n_cpu;
          if (a[i] >= 0 && a[i] != cur) ++n_gpu;
        }
        ASSERT_EQ(n_gpu, n_cpu) << "sequence " << b << " head " << h << ": slot counts differ";
        ASSERT_TRUE(std::find(a, a + K, cur) != a + K) << "current block missing, sequence " << b;
        for (int64_t i = 0; i < K; ++i) {
          if (a[i] < 0 || a[i] == cur) continue;
          ASSERT_LT(a[i], cur) << "GPU picked a block that is not in the past";
          double m2 = 0.0;
          const double s = score(a[i], &m2);
          ASSERT_GE(s, worst - 1e-5 * std::max(mag, m2))
              << "sequence " << b << " head " << h << ": GPU picked block " << a[i]
              << ", no tie with the CPU gate's picks";
        }
      }
    std::printf("    gate: %lld of %lld (sequence, head) rows differ from the CPU gate, all "
                "rounding ties\n", static_cast<long long>(differ), static_cast<long long>(B * Hq));
    EXPECT_LE(differ * 20, B * Hq) << "too many ties to be rounding";
  }

  // Naive bf16 decode over the CPU selection: the error bound.
  std::vector<float> nout(q.size()), nlse(static_cast<size_t>(B * Hq));
  {
    std::vector<std::pair<int64_t, int64_t>> ranges;
    std::vector<float> s, acc(static_cast<size_t>(D));
    const float fscale = static_cast<float>(scale);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < Hq; ++h) {
        const int64_t bh = b * Hq + h, kvh = h / G;
        rows_of(moba ? &rsel : nullptr, cfg.top_k, S, cs.lens[b], bh, ranges);
        const float* qr = &q[bh * D];
        s.clear();
        float m = -INFINITY;
        for (auto [r0, r1] : ranges)
          for (int64_t t = r0; t < r1; ++t) {
            const double* kr = ref.k(b, t) + kvh * D;
            float dot = 0.f;
            for (int64_t d = 0; d < D; ++d) dot += qr[d] * static_cast<float>(kr[d]);
            s.push_back(fscale * dot);
            m = std::max(m, s.back());
          }
        std::fill(acc.begin(), acc.end(), 0.f);
        float sum = 0.f;
        size_t i = 0;
        for (auto [r0, r1] : ranges)
          for (int64_t t = r0; t < r1; ++t, ++i) {
            const float p = std::exp(s[i] - m);
            sum += p;
            const float pb = round_bf16(p);
            const double* vr = ref.v(b, t) + kvh * D;
            for (int64_t d = 0; d < D; ++d) acc[d] += pb * static_cast<float>(vr[d]);
          }
        for (int64_t d = 0; d < D; ++d) nout[bh * D + d] = round_bf16(acc[d] / sum);
        nlse[bh] = m + std::log(sum);
      }
  }
  // Compare on the rows whose selections agree (all of them for dense).
  std::vector<float> g_o, n_o, g_l, n_l;
  std::vector<double> r_o, r_l;
  for (int64_t bh = 0; bh < B * Hq; ++bh) {
    if (!same[bh]) continue;
    for (int64_t d = 0; d < D; ++d) {
      g_o.push_back(gout[bh * D + d]);
      n_o.push_back(nout[bh * D + d]);
      r_o.push_back(rout[bh * D + d]);
    }
    g_l.push_back(glse[bh]);
    n_l.push_back(nlse[bh]);
    r_l.push_back(rlse[bh]);
  }
  for (float e : g_o) ASSERT_TRUE(std::isfinite(e)) << "out: NaN or inf (an element left unwritten?)";
  for (float e : g_l) ASSERT_TRUE(std::isfinite(e)) << "lse: NaN or inf";
  const double eo = max_rel_err(g_o, r_o), no = max_rel_err(n_o, r_o);
  const double el = max_rel_err(g_l, r_l), nl = max_rel_err(n_l, r_l);
  std::printf("    out gpu err %.3e  naive bf16 err %.3e  bound %.3e\n", eo, no, bound_for(no));
  std::printf("    lse gpu err %.3e  naive bf16 err %.3e  bound %.3e\n", el, nl, bound_for(nl));
  EXPECT_LE(eo, bound_for(no)) << "out";
  EXPECT_LE(el, bound_for(nl)) << "lse";
}

std::string case_name(const ::testing::TestParamInfo<Case>& i) { return i.param.name; }

INSTANTIATE_TEST_SUITE_P(
    Decode, DecodeGpu,
    ::testing::Values(
        // name, lens, appends, Hq, Hkv, D, S, K (0 = dense), capacity
        Case{"dense_d128_h16", {1, 700, 1500}, 0, 16, 16, 128, 64, 0, 2048},
        Case{"dense_d64_gqa4_append", {5, 130, 513, 4000}, 3, 16, 4, 64, 64, 0, 4096},
        Case{"dense_d128_gqa8_64k", {65536, 40001}, 2, 8, 1, 128, 512, 0, 65536},
        Case{"dense_d64_gqa32", {3000, 77}, 1, 32, 1, 64, 64, 0, 3072},
        Case{"moba_d128_gqa4_s64_k3", {3, 63, 66, 1000, 2047}, 3, 16, 4, 128, 64, 3, 2048},
        Case{"moba_d64_h16_s128_k1", {2, 129, 900}, 2, 16, 16, 64, 128, 1, 1024},
        Case{"moba_d128_gqa8_s512_k8", {300, 3000, 20000}, 2, 8, 1, 128, 512, 8, 20480},
        Case{"moba_d128_gqa4_s256_k2_64k", {65536}, 1, 16, 4, 128, 256, 2, 65536},
        Case{"moba_d64_gqa32_s64_k4", {2500, 64, 4097}, 2, 32, 1, 64, 64, 4, 4160},
        Case{"moba_d128_gqa2_s96_k3", {97, 1000, 191}, 2, 4, 2, 128, 96, 3, 1024},
        Case{"moba_d64_h4_s512_k5_kge", {1500, 2600}, 2, 4, 4, 64, 512, 5, 2600},
        Case{"moba_d128_gqa16_s128_k8_b4", {7000, 129, 4000, 5555}, 1, 16, 1, 128, 128, 8, 8192}),
    case_name);

// Bad input: a moba::Error naming the problem.
TEST(DecodeGpuErrors, ShapesAreChecked) {
  const attn::Options opt;
  // No device needed: these throw before touching it.
  EXPECT_THROW(acu::DecodeCache(1, 128, 1, 96, 64), moba::Error);
  EXPECT_THROW(acu::DecodeCache(0, 128, 1, 64, 64), moba::Error);
  EXPECT_THROW(acu::DecodePlan(1, 128, 4, 4, 96, MobaConfig{64, 3}, opt), moba::Error);
  EXPECT_THROW(acu::DecodePlan(1, 128, 6, 4, 64, MobaConfig{64, 3}, opt), moba::Error);
  EXPECT_THROW(acu::DecodePlan(1, 128, 128, 1, 64, MobaConfig{64, 3}, opt), moba::Error);
  EXPECT_THROW(acu::DecodePlan(1, 128, 4, 4, 64, MobaConfig{64, 65}, opt), moba::Error);
}

TEST(DecodeGpuErrors, CapacityAndEmpty) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device: GPU decode tests skipped";
  const attn::Options opt;
  const MobaConfig cfg{64, 2};
  acu::DecodeCache cache(2, 100, 2, 64, 64);
  acu::DecodePlan plan(2, 100, 4, 2, 64, cfg, opt);
  DeviceBuffer<acu::bf16> k(101 * 2 * 64), v(101 * 2 * 64), q(2 * 4 * 64), out(2 * 4 * 64);
  DeviceBuffer<float> lse(8);
  CUDA_CHECK(cudaMemset(k.ptr, 0, 101 * 2 * 64 * 2));
  CUDA_CHECK(cudaMemset(v.ptr, 0, 101 * 2 * 64 * 2));
  CUDA_CHECK(cudaMemset(q.ptr, 0, 2 * 4 * 64 * 2));
  // Empty sequences: no query token.
  EXPECT_THROW(acu::decode_dense(plan, cache, q.ptr, out.ptr, lse.ptr), moba::Error);
  // Prefill beyond capacity, bad cu_seqlens.
  EXPECT_THROW(cache.fill({0, 101, 101}, k.ptr, v.ptr), moba::Error);
  EXPECT_THROW(cache.fill({0, 10}, k.ptr, v.ptr), moba::Error);
  EXPECT_THROW(cache.fill({0, 10, 5}, k.ptr, v.ptr), moba::Error);
  cache.fill({0, 0, 100}, k.ptr, v.ptr);
  EXPECT_THROW(acu::decode_moba(plan, cache, q.ptr, out.ptr, lse.ptr), moba::Error);  // seq 0 empty
  // Sequence 1 is at capacity: append names it.
  try {
    cache.append(k.ptr, v.ptr);
    ADD_FAILURE() << "append past capacity did not throw";
  } catch (const moba::Error& e) {
    EXPECT_NE(std::string(e.what()).find("sequence 1"), std::string::npos) << e.what();
  }
  // A cache that does not match the plan.
  acu::DecodeCache other(2, 100, 1, 64, 64);
  other.fill({0, 3, 6}, k.ptr, v.ptr);
  EXPECT_THROW(acu::decode_dense(plan, other, q.ptr, out.ptr, lse.ptr), moba::Error);
  acu::DecodeCache other_s(2, 100, 2, 64, 32);
  other_s.fill({0, 3, 6}, k.ptr, v.ptr);
  EXPECT_THROW(acu::decode_moba(plan, other_s, q.ptr, out.ptr, lse.ptr), moba::Error);
  CUDA_CHECK(cudaDeviceSynchronize());
}

// adopt(): rows written in place, means computed as fill() computes them.
TEST(DecodeGpuCache, AdoptEqualsFill) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device: GPU decode tests skipped";
  const int64_t B = 2, T = 1000, Hkv = 3, D = 128, S = 64;
  const std::vector<int64_t> lens = {1000, 130};
  acu::DecodeCache a(B, T, Hkv, D, S), f(B, T, Hkv, D, S);
  const size_t kv = static_cast<size_t>(B * T * Hkv * D);
  acu::fill_random_bf16(a.k(), kv, 7);
  acu::fill_random_bf16(a.v(), kv, 8);
  a.adopt(lens);
  // The same rows, packed, through fill().
  DeviceBuffer<acu::bf16> pk(static_cast<size_t>((lens[0] + lens[1]) * Hkv * D)),
      pv(static_cast<size_t>((lens[0] + lens[1]) * Hkv * D));
  const size_t row = static_cast<size_t>(Hkv * D);
  for (int64_t b = 0, o = 0; b < B; o += lens[b], ++b) {
    CUDA_CHECK(cudaMemcpy(pk.ptr + o * row, a.k() + b * T * row, 2 * row * lens[b], cudaMemcpyDeviceToDevice));
    CUDA_CHECK(cudaMemcpy(pv.ptr + o * row, a.v() + b * T * row, 2 * row * lens[b], cudaMemcpyDeviceToDevice));
  }
  f.fill({0, lens[0], lens[0] + lens[1]}, pk.ptr, pv.ptr);
  const size_t nm = static_cast<size_t>(B * (T / S) * row);
  std::vector<float> ma(nm), mf(nm);
  CUDA_CHECK(cudaMemcpy(ma.data(), a.means(), 4 * nm, cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaMemcpy(mf.data(), f.means(), 4 * nm, cudaMemcpyDeviceToHost));
  int64_t differ = 0, checked = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < lens[b] / S; ++j)
      for (size_t i = 0; i < row; ++i, ++checked)
        differ += ma[(b * (T / S) + j) * row + i] != mf[(b * (T / S) + j) * row + i];
  EXPECT_EQ(differ, 0);
  EXPECT_GT(checked, 0);
  EXPECT_EQ(a.len(), f.len());
}

}  // namespace
}  // namespace moba::test
