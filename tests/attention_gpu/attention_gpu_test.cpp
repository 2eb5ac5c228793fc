// GPU attention against the CPU reference (fp64) on fresh random inputs, over awkward
// shapes: T not a multiple of S, K = 1, K >= number of blocks (must equal dense), GQA 4:1,
// varlen with odd lengths and a one-token sequence, head dims 64 and 128, S up to 4096.
// Error bound, written once (bound_for): a bf16 kernel's error against fp64 is at most 2x
// that of the naive bf16 implementation of naive_bf16.h. Attention is compared on one
// selection (the GPU gate's), so near-ties in the gate cannot make the test flaky; the gate
// is checked apart against the CPU gate, allowing different picks only for rounding ties.
// Skips (passes) with a message when no CUDA device is present.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "attention/attention_cpu.h"
#include "attention/cuda/attention_cuda.h"
#include "attention/fwd_chunks.h"
#include "attention/gate.h"
#include "attention_gpu/bf16_vectors.h"
#include "attention_gpu/device_buffer.h"
#include "attention_gpu/naive_bf16.h"
#include "attention/brute_force.h"
#include "core/cuda_check.cuh"
#include "core/error.h"
#include "core/random.h"
#include "scoped_env.h"

namespace moba::test {
namespace {

using attn::Layout;
using attn::MobaConfig;
using attn::Selection;
namespace acu = attn::cuda;



// bf16-valued normal numbers: the GPU, the naive version and the reference see the same.

// A test's q, k, v and dout (the loss's weights), drawn from seeds seed .. seed + 3, on the
// host and, as bf16, on the device.
struct Bf16Inputs {
  std::vector<float> q, k, v, dout;
  DeviceBuffer<acu::bf16> dq_in, dk_in, dv_in, ddo;
  Bf16Inputs(const Layout& l, uint64_t seed)
      : q(bf16_normal(l.q_elems(), seed)),
        k(bf16_normal(l.kv_elems(), seed + 1)),
        v(bf16_normal(l.kv_elems(), seed + 2)),
        dout(bf16_normal(l.q_elems(), seed + 3)),
        dq_in(q.size()),
        dk_in(k.size()),
        dv_in(v.size()),
        ddo(dout.size()) {
    dq_in.upload(to_bf16(q));
    dk_in.upload(to_bf16(k));
    dv_in.upload(to_bf16(v));
    ddo.upload(to_bf16(dout));
  }
};

// The one error bound of bf16 kernels: twice the naive bf16 implementation's error, plus
// a floor for outputs the naive version computes almost exactly (lse, in fp32).
double bound_for(double naive_err) { return 2.0 * naive_err + 1e-5; }

bool all_finite(const std::vector<float>& x) {
  for (float e : x)
    if (!std::isfinite(e)) return false;
  return true;
}

void expect_close(const char* what, const std::vector<float>& gpu, const std::vector<double>& ref,
                  const std::vector<float>& naive) {
  ASSERT_TRUE(all_finite(gpu)) << what << ": NaN or inf (an element left unwritten?)";
  const double eg = max_rel_err(gpu, ref), en = max_rel_err(naive, ref);
  std::printf("    %-4s gpu err %.3e  naive bf16 err %.3e  bound %.3e\n", what, eg, en, bound_for(en));
  EXPECT_LE(eg, bound_for(en)) << what;
}

struct Case {
  const char* name;
  std::vector<int64_t> cu;
  int64_t Hq, Hkv, D;
  int64_t S, K;  // K = 0: dense attention
};

// Gate check: a slot set may differ from the CPU gate's only where the scores tie within
// fp32 rounding (the GPU sums the D products in another order).
void check_gate(const Layout& l, const MobaConfig& cfg, const std::vector<float>& q,
                const std::vector<float>& k, const Selection& gpu) {
  const Selection cpu = attn::moba_gate<float>(l, cfg, q, k);
  const std::vector<float> means = attn::block_means<float>(l, cfg, k);
  const int64_t Hq = l.num_q_heads, Hkv = l.num_kv_heads, D = l.head_dim, K = cfg.top_k;
  int64_t differ = 0, rows = 0;
  for (int64_t b = 0; b < l.batch(); ++b) {
    const int64_t row0 = attn::full_block_offset(l, cfg, b);
    for (int64_t t = 0; t < l.seq_len(b); ++t)
      for (int64_t h = 0; h < Hq; ++h) {
        const int64_t tok = l.seq_begin(b) + t;
        ++rows;
        auto a = gpu.at(tok, h), c = cpu.at(tok, h);
        if (std::equal(a.begin(), a.end(), c.begin())) continue;
        ++differ;
        const float* qr = &q[(tok * Hq + h) * D];
        auto score = [&](int32_t j, double* mag) {
          const float* m = &means[((row0 + j) * Hkv + h / (Hq / Hkv)) * D];
          double s = 0.0, a2 = 0.0;
          for (int64_t d = 0; d < D; ++d) {
            s += double(qr[d]) * m[d];
            a2 += std::abs(double(qr[d]) * m[d]);
          }
          if (mag) *mag = a2;
          return s;
        };
        double worst_cpu = INFINITY, mag = 0.0;
        for (int64_t i = 0; i < K - 1; ++i) worst_cpu = std::min(worst_cpu, score(c[i], &mag));
        for (int64_t i = 0; i < K - 1; ++i) {
          double m2 = 0.0;
          const double s = score(a[i], &m2);
          ASSERT_GE(s, worst_cpu - 1e-5 * std::max(mag, m2))
              << "gate: token " << tok << " head " << h << " picked block " << a[i]
              << " which is no tie with the CPU gate's picks";
        }
        ASSERT_EQ(a[K - 1], c[K - 1]) << "current block differs at token " << tok;
      }
  }
  std::printf("    gate: %lld of %lld rows differ from the CPU gate, all within rounding ties\n",
              static_cast<long long>(differ), static_cast<long long>(rows));
}

class AttentionGpu : public ::testing::TestWithParam<Case> {};

TEST_P(AttentionGpu, MatchesReference) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device: GPU attention tests skipped";
  const Case& cs = GetParam();
  const Layout l = Layout::varlen(cs.cu, cs.Hq, cs.Hkv, cs.D);
  const bool moba = cs.K > 0;
  const MobaConfig cfg{moba ? cs.S : 64, moba ? cs.K : 1};
  const attn::Options opt;
  const double scale = opt.scale_for(l);
  static uint64_t seed = 1234;
  seed += 17;
  // bf16-valued inputs: the GPU, the naive version and the reference see the same numbers.
  Bf16Inputs in(l, seed);
  const auto &q = in.q, &k = in.k, &v = in.v, &dout = in.dout;
  auto &dq_in = in.dq_in, &dk_in = in.dk_in, &dv_in = in.dv_in, &ddo = in.ddo;
  DeviceBuffer<acu::bf16> dout_o(q.size()), ddq(q.size()), ddk(k.size()), ddv(v.size());
  DeviceBuffer<float> dlse(l.lse_elems());
  DeviceBuffer<int32_t> dsel(l.lse_elems() * cfg.top_k);
  acu::Plan plan(l, cfg, opt);

  Selection sel;
  if (moba) {
    dsel.poison();
    acu::moba_gate(plan, dq_in.ptr, dk_in.ptr, dsel.ptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    sel.top_k = cfg.top_k;
    sel.num_q_heads = l.num_q_heads;
    sel.blocks = dsel.download();
    check_gate(l, cfg, q, k, sel);
  }
  for (auto* b : {&dout_o, &ddq, &ddk, &ddv}) b->poison();
  dlse.poison();
  if (moba) {
    acu::moba_forward(plan, dsel.ptr, dq_in.ptr, dk_in.ptr, dv_in.ptr, dout_o.ptr, dlse.ptr);
    acu::moba_backward(plan, dsel.ptr, dq_in.ptr, dk_in.ptr, dv_in.ptr, dout_o.ptr, dlse.ptr,
                       ddo.ptr, ddq.ptr, ddk.ptr, ddv.ptr);
  } else {
    acu::dense_forward(plan, dq_in.ptr, dk_in.ptr, dv_in.ptr, dout_o.ptr, dlse.ptr);
    acu::dense_backward(plan, dq_in.ptr, dk_in.ptr, dv_in.ptr, dout_o.ptr, dlse.ptr, ddo.ptr,
                        ddq.ptr, ddk.ptr, ddv.ptr);
  }
  CUDA_CHECK(cudaDeviceSynchronize());
  const auto g_out = from_bf16(dout_o.download()), g_dq = from_bf16(ddq.download()),
             g_dk = from_bf16(ddk.download()), g_dv = from_bf16(ddv.download());
  const auto g_lse = dlse.download();

  // fp64 reference.
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
  const NaiveResult nv = naive_bf16(l, cfg.block_size, moba ? &sel : nullptr, scale, q, k, v, dout);
  expect_close("out", g_out, out, nv.out);
  expect_close("lse", g_lse, lse, nv.lse);
  expect_close("dq", g_dq, rdq, nv.dq);
  expect_close("dk", g_dk, rdk, nv.dk);
  expect_close("dv", g_dv, rdv, nv.dv);

  // The backward above reused the gather lists of the forward; after moba_gate they are
  // rebuilt: check that path too.
  if (moba) {
    acu::moba_gate(plan, dq_in.ptr, dk_in.ptr, dsel.ptr);
    for (auto* b : {&ddq, &ddk, &ddv}) b->poison();
    acu::moba_backward(plan, dsel.ptr, dq_in.ptr, dk_in.ptr, dv_in.ptr, dout_o.ptr, dlse.ptr,
                       ddo.ptr, ddq.ptr, ddk.ptr, ddv.ptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    std::printf("    backward with rebuilt gather lists:\n");
    expect_close("dq", from_bf16(ddq.download()), rdq, nv.dq);
    expect_close("dk", from_bf16(ddk.download()), rdk, nv.dk);
    expect_close("dv", from_bf16(ddv.download()), rdv, nv.dv);
  }

  // When K covers every block, MoBA is dense causal attention: the two GPU paths agree.
  const int64_t blocks = (l.max_seq_len() + cfg.block_size - 1) / cfg.block_size;
  if (moba && cs.K >= blocks) {
    DeviceBuffer<acu::bf16> o2(q.size());
    DeviceBuffer<float> lse2(l.lse_elems());
    o2.poison();
    acu::dense_forward(plan, dq_in.ptr, dk_in.ptr, dv_in.ptr, o2.ptr, lse2.ptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    const double diff = max_rel_err(from_bf16(o2.download()), std::vector<double>(g_out.begin(), g_out.end()));
    std::printf("    K >= blocks: |MoBA - dense| on the GPU %.3e\n", diff);
    EXPECT_LE(diff, bound_for(max_rel_err(nv.out, out)));
  }
}

const Case kCases[] = {
    {"dense_gqa4_d128", {0, 1000}, 4, 1, 128, 0, 0},
    {"dense_varlen_d64", {0, 1, 78, 600, 1777}, 2, 2, 64, 0, 0},
    {"dense_t1_d128", {0, 1}, 2, 1, 128, 0, 0},
    {"moba_s64_k3_gqa4", {0, 1500}, 4, 1, 128, 64, 3},
    {"moba_k1_d64", {0, 700}, 2, 1, 64, 128, 1},
    {"moba_k_ge_blocks", {0, 500}, 2, 2, 128, 64, 9},
    {"moba_varlen_odd", {0, 333, 1100, 1101, 2047}, 4, 2, 128, 128, 4},
    {"moba_k16_s64_d64", {0, 4096}, 2, 1, 64, 64, 16},
    {"moba_s512_k3", {0, 3000}, 2, 2, 128, 512, 3},
    {"moba_s2048_k2", {0, 5000}, 1, 1, 128, 2048, 2},
    {"moba_s4096_k2_d64", {0, 9000}, 1, 1, 64, 4096, 2},
};

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionGpu, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return std::string(info.param.name); });

// Both dense forwards, the sm_90a one (wgmma + TMA, fwd_wgmma.cuh; the default on sm_90,
// so the AttentionGpu suite above runs it) and the mma.sync one (fwd_kernel.cuh;
// MOBA_DENSE_FWD=mma, the path of other GPUs): out and lse of each against the fp64
// reference with the same bound, and against each other. Shapes cover both head dims,
// GQA, varlen with a one-token sequence, T = 1, and enough key tiles to wrap the K/V ring
// several times. (The whole suite can also run with MOBA_DENSE_FWD=mma.)
struct DenseCase {
  const char* name;
  std::vector<int64_t> cu;
  int64_t Hq, Hkv, D;
};

class DenseWgmmaGpu : public ::testing::TestWithParam<DenseCase> {};

template <typename A, typename B>
bool same_bytes(const A& a, const B& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), sizeof(a[0]) * a.size()) == 0;
}

bool is_sm90() {
  int dev = 0, major = 0, minor = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
  return major == 9 && minor == 0;
}

TEST_P(DenseWgmmaGpu, MatchesReference) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device: GPU attention tests skipped";
  if (!is_sm90()) GTEST_SKIP() << "wgmma forward needs an sm_90 device";
  const DenseCase& cs = GetParam();
  const Layout l = Layout::varlen(cs.cu, cs.Hq, cs.Hkv, cs.D);
  const MobaConfig cfg{64, 1};
  const attn::Options opt;
  const double scale = opt.scale_for(l);
  Bf16Inputs in(l, 501);
  const auto &q = in.q, &k = in.k, &v = in.v, &dout = in.dout;
  auto &dq_in = in.dq_in, &dk_in = in.dk_in, &dv_in = in.dv_in;
  DeviceBuffer<acu::bf16> o_wg(q.size()), o_def(q.size());
  DeviceBuffer<float> lse_wg(l.lse_elems()), lse_def(l.lse_elems());
  for (auto* b : {&o_wg, &o_def}) b->poison();
  for (auto* b : {&lse_wg, &lse_def}) b->poison();
  acu::Plan plan(l, cfg, opt);

  const char* prev = std::getenv("MOBA_DENSE_FWD");
  const std::string saved = prev ? prev : "";
  setenv("MOBA_DENSE_FWD", "wgmma", 1);
  acu::dense_forward(plan, dq_in.ptr, dk_in.ptr, dv_in.ptr, o_wg.ptr, lse_wg.ptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  setenv("MOBA_DENSE_FWD", "mma", 1);
  acu::dense_forward(plan, dq_in.ptr, dk_in.ptr, dv_in.ptr, o_def.ptr, lse_def.ptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  if (prev) setenv("MOBA_DENSE_FWD", saved.c_str(), 1);
  else unsetenv("MOBA_DENSE_FWD");

  std::vector<double> qd(q.begin(), q.end()), kd(k.begin(), k.end()), vd(v.begin(), v.end());
  std::vector<double> out(q.size()), lse(l.lse_elems());
  attn::cpu::dense_forward<double>(l, opt, qd, kd, vd, out, lse);
  const NaiveResult nv = naive_bf16(l, cfg.block_size, nullptr, scale, q, k, v, dout);
  const auto g_out = from_bf16(o_wg.download());
  const auto g_lse = lse_wg.download();
  std::printf("    wgmma forward:\n");
  expect_close("out", g_out, out, nv.out);
  expect_close("lse", g_lse, lse, nv.lse);
  const auto d_out = from_bf16(o_def.download());
  std::printf("    mma.sync forward:\n");
  expect_close("out", d_out, out, nv.out);
  expect_close("lse", lse_def.download(), lse, nv.lse);
  std::printf("    |wgmma - mma.sync| out %.3e\n",
              max_rel_err(g_out, std::vector<double>(d_out.begin(), d_out.end())));
}

const DenseCase kDenseCases[] = {
    {"wg_gqa4_d128", {0, 1000}, 4, 1, 128},
    {"wg_varlen_d64", {0, 1, 78, 600, 1777}, 2, 2, 64},
    {"wg_t1_d128", {0, 1}, 2, 1, 128},
    {"wg_varlen_d128", {0, 129, 2177, 4353}, 2, 1, 128},
    {"wg_long_d64", {0, 4096}, 4, 2, 64},
    {"wg_odd_d128", {0, 127, 128, 385}, 1, 1, 128},
};

// v20: MOBA_FWD_PINGPONG=1 (the consumer warpgroups take turns issuing their MMAs: FA3's
// ping-pong, fwd_wgmma_step.cuh) only reorders the issue of the same MMAs, so out and lse
// are bit for bit the plain kernels': the dense forward, and the MoBA forward (past and
// current-block kernels) on the default grid and on 1 and 3 persistent CTAs (the token
// carried across a CTA's items and passed on by idle warpgroups). A bad value is an error
// naming it. Separate tests so that a hang here (a barrier count wrong) does not stop the
// others: bench/perf_session.sh's test step runs them last, under their own timeout.
TEST_P(DenseWgmmaGpu, PingPongBitEqual) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device: GPU attention tests skipped";
  if (!is_sm90()) GTEST_SKIP() << "wgmma forward needs an sm_90 device";
  const DenseCase& cs = GetParam();
  const Layout l = Layout::varlen(cs.cu, cs.Hq, cs.Hkv, cs.D);
  Bf16Inputs in(l, 501);
  acu::Plan plan(l, MobaConfig{64, 1}, attn::Options{});
  std::vector<std::vector<acu::bf16>> outs;
  std::vector<std::vector<float>> lses;
  for (const char* pp : {"0", "1"}) {
    ScopedEnv fam("MOBA_DENSE_FWD", "wgmma"), ping("MOBA_FWD_PINGPONG", pp);
    DeviceBuffer<acu::bf16> o(in.q.size());
    DeviceBuffer<float> lse(l.lse_elems());
    o.poison();
    lse.poison();
    acu::dense_forward(plan, in.dq_in.ptr, in.dk_in.ptr, in.dv_in.ptr, o.ptr, lse.ptr);
    const cudaError_t err = cudaDeviceSynchronize();
    ASSERT_EQ(err, cudaSuccess) << "MOBA_FWD_PINGPONG=" << pp << ": " << cudaGetErrorString(err);
    outs.push_back(o.download());
    lses.push_back(lse.download());
  }
  EXPECT_TRUE(same_bytes(outs[1], outs[0])) << "ping-pong out differs from the plain kernel's";
  EXPECT_TRUE(same_bytes(lses[1], lses[0])) << "ping-pong lse differs from the plain kernel's";
  ScopedEnv fam("MOBA_DENSE_FWD", "wgmma"), bad("MOBA_FWD_PINGPONG", "yes");
  DeviceBuffer<acu::bf16> o(in.q.size());
  DeviceBuffer<float> lse(l.lse_elems());
  try {
    acu::dense_forward(plan, in.dq_in.ptr, in.dk_in.ptr, in.dv_in.ptr, o.ptr, lse.ptr);
    ADD_FAILURE() << "MOBA_FWD_PINGPONG=yes accepted";
  } catch (const moba::Error& e) {
    EXPECT_NE(std::string(e.what()).find("MOBA_FWD_PINGPONG=yes"), std::string::npos) << e.what();
  }
  CUDA_CHECK(cudaDeviceSynchronize());
}

INSTANTIATE_TEST_SUITE_P(Shapes, DenseWgmmaGpu, ::testing::ValuesIn(kDenseCases),
                         [](const auto& info) { return std::string(info.param.name); });

// Both dense backwards on the same forward output: the sm_90a one (wgmma + TMA,
// bwd_wgmma.cuh, the default on sm_90) and the mma.sync one (bwd_kernel.cuh, MOBA_DENSE_BWD=mma):
// dq, dk, dv of each against the fp64 reference with the same bound, and against each
// other. Shapes: both head dims (query tiles of 128 rows at D = 64, 64 at D = 128), GQA
// 4:1 and MHA, varlen with odd lengths and a one-token sequence, T = 1, T not a multiple
// of the tiles, query tiles running into the next sequence and past N, and 4096 tokens
// (64 query tiles per key tile and head: the two-slot ring wraps many times).
// dq, dk, dv of a wgmma backward and of the mma.sync one (device buffers) against the fp64
// reference with the suite's bound, and their difference (the line the GPU session greps).
void compare_backwards(const DeviceBuffer<acu::bf16>& dq_wg, const DeviceBuffer<acu::bf16>& dk_wg,
                       const DeviceBuffer<acu::bf16>& dv_wg, const DeviceBuffer<acu::bf16>& dq_mma,
                       const DeviceBuffer<acu::bf16>& dk_mma, const DeviceBuffer<acu::bf16>& dv_mma,
                       const std::vector<double>& rdq, const std::vector<double>& rdk,
                       const std::vector<double>& rdv, const NaiveResult& nv) {
  const auto w_dq = from_bf16(dq_wg.download()), w_dk = from_bf16(dk_wg.download()),
             w_dv = from_bf16(dv_wg.download());
  const auto m_dq = from_bf16(dq_mma.download()), m_dk = from_bf16(dk_mma.download()),
             m_dv = from_bf16(dv_mma.download());
  std::printf("    wgmma backward:\n");
  expect_close("dq", w_dq, rdq, nv.dq);
  expect_close("dk", w_dk, rdk, nv.dk);
  expect_close("dv", w_dv, rdv, nv.dv);
  std::printf("    mma.sync backward:\n");
  expect_close("dq", m_dq, rdq, nv.dq);
  expect_close("dk", m_dk, rdk, nv.dk);
  expect_close("dv", m_dv, rdv, nv.dv);
  auto diff = [](const std::vector<float>& a, const std::vector<float>& b) {
    return max_rel_err(a, std::vector<double>(b.begin(), b.end()));
  };
  std::printf("    |wgmma - mma.sync| dq %.3e  dk %.3e  dv %.3e\n", diff(w_dq, m_dq),
              diff(w_dk, m_dk), diff(w_dv, m_dv));
}

class DenseWgmmaBwdGpu : public ::testing::TestWithParam<DenseCase> {};

TEST_P(DenseWgmmaBwdGpu, MatchesReference) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device: GPU attention tests skipped";
  if (!is_sm90()) GTEST_SKIP() << "wgmma backward needs an sm_90 device";
  const DenseCase& cs = GetParam();
  const Layout l = Layout::varlen(cs.cu, cs.Hq, cs.Hkv, cs.D);
  const MobaConfig cfg{64, 1};
  const attn::Options opt;
  const double scale = opt.scale_for(l);
  Bf16Inputs in(l, 601);
  const auto &q = in.q, &k = in.k, &v = in.v, &dout = in.dout;
  auto &dq_in = in.dq_in, &dk_in = in.dk_in, &dv_in = in.dv_in, &ddo = in.ddo;
  DeviceBuffer<acu::bf16> o(q.size());
  DeviceBuffer<float> lse(l.lse_elems());
  DeviceBuffer<acu::bf16> dq_wg(q.size()), dk_wg(k.size()), dv_wg(v.size());
  DeviceBuffer<acu::bf16> dq_mma(q.size()), dk_mma(k.size()), dv_mma(v.size());
  for (auto* b : {&o, &dq_wg, &dk_wg, &dv_wg, &dq_mma, &dk_mma, &dv_mma}) b->poison();
  lse.poison();
  acu::Plan plan(l, cfg, opt);
  acu::dense_forward(plan, dq_in.ptr, dk_in.ptr, dv_in.ptr, o.ptr, lse.ptr);

  const char* prev = std::getenv("MOBA_DENSE_BWD");
  const std::string saved = prev ? prev : "";
  setenv("MOBA_DENSE_BWD", "wgmma", 1);
  acu::dense_backward(plan, dq_in.ptr, dk_in.ptr, dv_in.ptr, o.ptr, lse.ptr, ddo.ptr, dq_wg.ptr,
                      dk_wg.ptr, dv_wg.ptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  setenv("MOBA_DENSE_BWD", "mma", 1);
  acu::dense_backward(plan, dq_in.ptr, dk_in.ptr, dv_in.ptr, o.ptr, lse.ptr, ddo.ptr, dq_mma.ptr,
                      dk_mma.ptr, dv_mma.ptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  if (prev) setenv("MOBA_DENSE_BWD", saved.c_str(), 1);
  else unsetenv("MOBA_DENSE_BWD");

  std::vector<double> qd(q.begin(), q.end()), kd(k.begin(), k.end()), vd(v.begin(), v.end()),
      dod(dout.begin(), dout.end());
  std::vector<double> out(q.size()), rlse(l.lse_elems()), rdq(q.size()), rdk(k.size()), rdv(v.size());
  attn::cpu::dense_forward<double>(l, opt, qd, kd, vd, out, rlse);
  attn::cpu::dense_backward<double>(l, opt, qd, kd, vd, out, rlse, dod, rdq, rdk, rdv);
  const NaiveResult nv = naive_bf16(l, cfg.block_size, nullptr, scale, q, k, v, dout);
  std::printf("    forward (default path):\n");
  expect_close("out", from_bf16(o.download()), out, nv.out);
  compare_backwards(dq_wg, dk_wg, dv_wg, dq_mma, dk_mma, dv_mma, rdq, rdk, rdv, nv);
}

const DenseCase kDenseBwdCases[] = {
    {"bwg_gqa4_d128", {0, 1000}, 4, 1, 128},
    {"bwg_gqa4_d64", {0, 1000}, 4, 1, 64},
    {"bwg_mha_d128", {0, 300}, 3, 3, 128},
    {"bwg_varlen_d64", {0, 1, 78, 600, 1777}, 2, 2, 64},
    {"bwg_cross_d128", {0, 100, 1000, 1037}, 2, 1, 128},
    {"bwg_t1_d128", {0, 1}, 2, 1, 128},
    {"bwg_t1_d64", {0, 1}, 1, 1, 64},
    {"bwg_odd_d128", {0, 127, 128, 385}, 1, 1, 128},
    {"bwg_odd_d64", {0, 129, 130, 333}, 4, 2, 64},
    {"bwg_long_d64", {0, 4096}, 4, 2, 64},
    {"bwg_long_d128", {0, 2048}, 2, 1, 128},
};

INSTANTIATE_TEST_SUITE_P(Shapes, DenseWgmmaBwdGpu, ::testing::ValuesIn(kDenseBwdCases),
                         [](const auto& info) { return std::string(info.param.name); });

// Both MoBA backwards on the same selection and forward output: the sm_90a one (wgmma +
// TMA + gathered cp.async rows, bwd_moba_wgmma.cuh, MOBA_MOBA_BWD=wgmma) and the mma.sync
// one (bwd_kernel.cuh, MOBA_MOBA_BWD=mma; wgmma is the default on sm_90): dq, dk, dv of each against the fp64
// MoBA reference given the GPU gate's selection, with the suite's bound, and against each
// other. Shapes: both head dims (query tiles of 128 rows at D = 64, 64 at D = 128), S 128,
// 256, 512 (and S = 64, which stays on the mma.sync kernel), K = 1 (no gathered tiles),
// 3, 8 and K >= the number of blocks (every past block gathered), GQA 4:1 and MHA, varlen
// with odd lengths, a one-token sequence and sequence starts not a multiple of 4 or of
// 128, T not a multiple of S, and 4096 tokens (many gathered tiles per bucket).
struct MobaBwdCase {
  const char* name;
  std::vector<int64_t> cu;
  int64_t Hq, Hkv, D, S, K;
};

class MobaWgmmaBwdGpu : public ::testing::TestWithParam<MobaBwdCase> {};

TEST_P(MobaWgmmaBwdGpu, MatchesReference) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device: GPU attention tests skipped";
  if (!is_sm90()) GTEST_SKIP() << "wgmma MoBA backward needs an sm_90 device";
  const MobaBwdCase& cs = GetParam();
  const Layout l = Layout::varlen(cs.cu, cs.Hq, cs.Hkv, cs.D);
  const MobaConfig cfg{cs.S, cs.K};
  const attn::Options opt;
  const double scale = opt.scale_for(l);
  Bf16Inputs in(l, 701);
  const auto &q = in.q, &k = in.k, &v = in.v, &dout = in.dout;
  auto &dq_in = in.dq_in, &dk_in = in.dk_in, &dv_in = in.dv_in, &ddo = in.ddo;
  DeviceBuffer<acu::bf16> o(q.size());
  DeviceBuffer<float> lse(l.lse_elems());
  DeviceBuffer<int32_t> dsel(l.lse_elems() * cfg.top_k);
  DeviceBuffer<acu::bf16> dq_wg(q.size()), dk_wg(k.size()), dv_wg(v.size());
  DeviceBuffer<acu::bf16> dq_mma(q.size()), dk_mma(k.size()), dv_mma(v.size());
  for (auto* b : {&o, &dq_wg, &dk_wg, &dv_wg, &dq_mma, &dk_mma, &dv_mma}) b->poison();
  lse.poison();
  dsel.poison();
  acu::Plan plan(l, cfg, opt);
  // Gate and forward once (the default paths); both backwards reuse the forward's gather
  // lists for this selection.
  acu::moba_gate(plan, dq_in.ptr, dk_in.ptr, dsel.ptr);
  acu::moba_forward(plan, dsel.ptr, dq_in.ptr, dk_in.ptr, dv_in.ptr, o.ptr, lse.ptr);
  CUDA_CHECK(cudaDeviceSynchronize());

  // The variable is restored on every exit of this scope (also when a call throws).
  struct EnvRestore {
    bool had;
    std::string value;
    EnvRestore() : had(std::getenv("MOBA_MOBA_BWD") != nullptr),
                   value(had ? std::getenv("MOBA_MOBA_BWD") : "") {}
    ~EnvRestore() {
      if (had) setenv("MOBA_MOBA_BWD", value.c_str(), 1);
      else unsetenv("MOBA_MOBA_BWD");
    }
  };
  cudaError_t wg_err = cudaSuccess;
  {
    EnvRestore restore;
    setenv("MOBA_MOBA_BWD", "wgmma", 1);
    acu::moba_backward(plan, dsel.ptr, dq_in.ptr, dk_in.ptr, dv_in.ptr, o.ptr, lse.ptr, ddo.ptr,
                       dq_wg.ptr, dk_wg.ptr, dv_wg.ptr);
    wg_err = cudaDeviceSynchronize();
    if (wg_err == cudaSuccess) {
      setenv("MOBA_MOBA_BWD", "mma", 1);
      acu::moba_backward(plan, dsel.ptr, dq_in.ptr, dk_in.ptr, dv_in.ptr, o.ptr, lse.ptr, ddo.ptr,
                         dq_mma.ptr, dk_mma.ptr, dv_mma.ptr);
    }
  }
  ASSERT_EQ(wg_err, cudaSuccess) << "wgmma MoBA backward: CUDA error " << cudaGetErrorString(wg_err);
  CUDA_CHECK(cudaDeviceSynchronize());
  // v23: the gathered tiles' dQ by the bulk reduce (MOBA_MOBA_BWD_DQ=bulk). dK and dV do not
  // depend on it: bit for bit the default's. dQ sums the same fp32 terms in another order
  // (both are atomic adds): against the reference below. A bad value is an error naming it.
  DeviceBuffer<acu::bf16> dq_bulk(q.size()), dk_bulk(k.size()), dv_bulk(v.size());
  for (auto* b : {&dq_bulk, &dk_bulk, &dv_bulk}) b->poison();
  const bool wgmma_ran = cs.S >= 128;  // S = 64 stays on the mma.sync kernel
  if (wgmma_ran) {
    ScopedEnv fam("MOBA_MOBA_BWD", "wgmma"), bulk("MOBA_MOBA_BWD_DQ", "bulk");
    acu::moba_backward(plan, dsel.ptr, dq_in.ptr, dk_in.ptr, dv_in.ptr, o.ptr, lse.ptr, ddo.ptr,
                       dq_bulk.ptr, dk_bulk.ptr, dv_bulk.ptr);
    const cudaError_t err = cudaDeviceSynchronize();
    ASSERT_EQ(err, cudaSuccess) << "MOBA_MOBA_BWD_DQ=bulk: " << cudaGetErrorString(err);
    EXPECT_TRUE(same_bytes(dk_bulk.download(), dk_wg.download())) << "MOBA_MOBA_BWD_DQ=bulk: dk differs";
    EXPECT_TRUE(same_bytes(dv_bulk.download(), dv_wg.download())) << "MOBA_MOBA_BWD_DQ=bulk: dv differs";
    ScopedEnv bad("MOBA_MOBA_BWD_DQ", "atomics");
    try {
      acu::moba_backward(plan, dsel.ptr, dq_in.ptr, dk_in.ptr, dv_in.ptr, o.ptr, lse.ptr, ddo.ptr,
                         dq_bulk.ptr, dk_bulk.ptr, dv_bulk.ptr);
      ADD_FAILURE() << "MOBA_MOBA_BWD_DQ=atomics accepted";
    } catch (const moba::Error& e) {
      EXPECT_NE(std::string(e.what()).find("MOBA_MOBA_BWD_DQ=atomics"), std::string::npos) << e.what();
    }
    CUDA_CHECK(cudaDeviceSynchronize());
  }

  Selection sel;
  sel.top_k = cfg.top_k;
  sel.num_q_heads = l.num_q_heads;
  sel.blocks = dsel.download();
  std::vector<double> qd(q.begin(), q.end()), kd(k.begin(), k.end()), vd(v.begin(), v.end()),
      dod(dout.begin(), dout.end());
  std::vector<double> out(q.size()), rlse(l.lse_elems()), rdq(q.size()), rdk(k.size()), rdv(v.size());
  attn::cpu::moba_forward<double>(l, cfg, sel, opt, qd, kd, vd, out, rlse);
  attn::cpu::moba_backward<double>(l, cfg, sel, opt, qd, kd, vd, out, rlse, dod, rdq, rdk, rdv);
  const NaiveResult nv = naive_bf16(l, cfg.block_size, &sel, scale, q, k, v, dout);
  std::printf("    forward (default path):\n");
  expect_close("out", from_bf16(o.download()), out, nv.out);
  compare_backwards(dq_wg, dk_wg, dv_wg, dq_mma, dk_mma, dv_mma, rdq, rdk, rdv, nv);
  if (wgmma_ran) {
    std::printf("    wgmma backward, MOBA_MOBA_BWD_DQ=bulk:\n");
    expect_close("dq", from_bf16(dq_bulk.download()), rdq, nv.dq);
  }
}

const MobaBwdCase kMobaBwdCases[] = {
    {"mwb_gqa4_d128_s128_k3", {0, 1000}, 4, 1, 128, 128, 3},
    {"mwb_gqa4_d64_s256_k3", {0, 1000}, 4, 1, 64, 256, 3},
    {"mwb_mha_d128_s512_k3", {0, 3000}, 2, 2, 128, 512, 3},
    {"mwb_k1_d64_s128", {0, 700}, 2, 1, 64, 128, 1},
    {"mwb_k8_d64_s128", {0, 2500}, 4, 2, 64, 128, 8},
    {"mwb_k8_d128_s256", {0, 2900}, 2, 1, 128, 256, 8},
    {"mwb_kge_d128_s256", {0, 900}, 2, 1, 128, 256, 16},
    {"mwb_kge_d64_s512", {0, 1600}, 3, 3, 64, 512, 4},
    {"mwb_varlen_d128_s128", {0, 1, 78, 600, 1777}, 4, 2, 128, 128, 3},
    {"mwb_varlen_d64_s256", {0, 1, 78, 600, 1777}, 2, 2, 64, 256, 4},
    {"mwb_odd_d128_s128", {0, 127, 128, 385}, 2, 1, 128, 128, 2},
    {"mwb_odd_d64_s128_k16", {0, 127, 128, 385}, 1, 1, 64, 128, 16},
    {"mwb_s64_mma_fallback", {0, 500}, 2, 1, 128, 64, 3},
    {"mwb_long_d128_s512", {0, 4096}, 4, 1, 128, 512, 3},
};

INSTANTIATE_TEST_SUITE_P(Shapes, MobaWgmmaBwdGpu, ::testing::ValuesIn(kMobaBwdCases),
                         [](const auto& info) { return std::string(info.param.name); });

// The gate's inputs: random q, k rounded to bf16 (so the CPU gate sees what the GPU reads),
// on the host and on the device.
struct GateInputs {
  std::vector<float> q, k;
  DeviceBuffer<acu::bf16> dq, dk;
  GateInputs(const Layout& l, uint64_t q_seed, uint64_t k_seed)
      : q(rounded(random_normal<float>(l.q_elems(), q_seed))),
        k(rounded(random_normal<float>(l.kv_elems(), k_seed))), dq(q.size()), dk(k.size()) {
    dq.upload(to_bf16(q));
    dk.upload(to_bf16(k));
  }
  static std::vector<float> rounded(std::vector<float> x) {
    for (float& e : x) e = round_bf16(e);
    return x;
  }
};

// The gate alone at a larger size (the CPU gate is cheap): many blocks, GQA, K = 8.
TEST(GateGpu, MatchesCpuGate) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device: GPU gate test skipped";
  const Layout l = Layout::varlen({0, 8192, 8192 + 3001}, 4, 2, 128);
  const MobaConfig cfg{128, 8};
  GateInputs in(l, 99, 98);
  const auto &q = in.q, &k = in.k;
  auto &dq = in.dq, &dk = in.dk;
  DeviceBuffer<int32_t> dsel(l.lse_elems() * cfg.top_k);
  dsel.poison();
  acu::Plan plan(l, cfg, attn::Options{});
  acu::moba_gate(plan, dq.ptr, dk.ptr, dsel.ptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  Selection sel{cfg.top_k, l.num_q_heads, dsel.download()};
  check_gate(l, cfg, q, k, sel);
}

// Context parallel's shard gate (moba_gate_shard_means, moba_gate_shard; docs/distributed.md,
// "The GPU path"): one sequence cut into R shards of whole blocks; each shard's split means
// gathered in rank order, then each shard's queries gated against all of them at its pos0.
// Every shard's selection equals the whole sequence's moba_gate rows for its tokens, bit
// for bit (the same means, products and order; the grid may differ in rows per CTA, which
// selects the same, TwoMtilesPerWarpSameSelection). Errors name a shard of two sequences,
// one not of whole blocks, and a pos0 that is not a multiple of S.
TEST(GateGpu, ShardGateEqualsTheWholeSequencesRows) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device: GPU gate test skipped";
  struct Case {
    int64_t R, Tr, Hq, Hkv, D, S, K;
  };
  const Case cases[] = {
      {2, 4096, 4, 2, 128, 128, 3}, {4, 1024, 2, 1, 64, 256, 5}, {3, 2048, 2, 2, 128, 512, 8},
      {2, 512, 4, 1, 64, 64, 2},    {2, 256, 2, 1, 128, 128, 1}, {4, 8192, 16, 4, 128, 512, 3},
  };
  int n = 0;
  for (const Case& cs : cases) {
    SCOPED_TRACE("case " + std::to_string(n) + ": R " + std::to_string(cs.R) + ", T_r " +
                 std::to_string(cs.Tr) + ", D " + std::to_string(cs.D) + ", S " +
                 std::to_string(cs.S) + ", K " + std::to_string(cs.K));
    const int64_t T = cs.R * cs.Tr;
    const Layout whole = Layout::varlen({0, T}, cs.Hq, cs.Hkv, cs.D);
    const MobaConfig cfg{cs.S, cs.K};
    GateInputs in(whole, 500 + n, 600 + n);
    ++n;
    auto &dq = in.dq, &dk = in.dk;
    DeviceBuffer<int32_t> dsel(whole.lse_elems() * cfg.top_k);
    dsel.poison();
    acu::Plan wplan(whole, cfg, attn::Options{});
    acu::moba_gate(wplan, dq.ptr, dk.ptr, dsel.ptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<int32_t> wsel = dsel.download();

    const Layout shard = Layout::varlen({0, cs.Tr}, cs.Hq, cs.Hkv, cs.D);
    const size_t qs = static_cast<size_t>(cs.Tr * cs.Hq * cs.D), ks = static_cast<size_t>(cs.Tr * cs.Hkv * cs.D);
    const size_t ms = static_cast<size_t>(cs.Tr / cs.S * cs.Hkv * 3 * cs.D);  // one shard's split means
    DeviceBuffer<acu::bf16> mall(ms * static_cast<size_t>(cs.R));
    std::vector<std::unique_ptr<acu::Plan>> plans;
    for (int64_t r = 0; r < cs.R; ++r) {
      plans.push_back(std::make_unique<acu::Plan>(shard, cfg, attn::Options{}));
      const acu::bf16* m = acu::moba_gate_shard_means(*plans.back(), dk.ptr + r * ks);
      if (cs.K > 1)
        CUDA_CHECK(cudaMemcpy(mall.ptr + r * ms, m, ms * sizeof(acu::bf16), cudaMemcpyDeviceToDevice));
    }
    const size_t ss = static_cast<size_t>(cs.Tr * cs.Hq * cs.K);
    for (int64_t r = 0; r < cs.R; ++r) {
      DeviceBuffer<int32_t> ssel(ss);
      ssel.poison();
      acu::moba_gate_shard(*plans[static_cast<size_t>(r)], dq.ptr + r * qs, mall.ptr, r * cs.Tr, ssel.ptr);
      const cudaError_t err = cudaDeviceSynchronize();
      ASSERT_EQ(err, cudaSuccess) << "rank " << r << ": " << cudaGetErrorString(err);
      const std::vector<int32_t> got = ssel.download();
      EXPECT_TRUE(std::equal(got.begin(), got.end(), wsel.begin() + static_cast<ptrdiff_t>(r * ss)))
          << "rank " << r << "'s shard selects other blocks than the whole sequence's gate";
    }
  }
  auto expect_error = [](auto&& call, const std::string& needle) {
    try {
      call();
      ADD_FAILURE() << "accepted; expected an error naming: " << needle;
    } catch (const moba::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  const MobaConfig cfg{128, 3};
  DeviceBuffer<acu::bf16> dq(4096 * 2 * 64), dk(4096 * 64), mall(64 * 3 * 64);
  DeviceBuffer<int32_t> dsel(4096 * 2 * 3);
  acu::Plan two(Layout::varlen({0, 1024, 2048}, 2, 1, 64), cfg, attn::Options{});
  expect_error([&] { acu::moba_gate_shard_means(two, dk.ptr); }, "one sequence, got 2");
  acu::Plan partial(Layout::varlen({0, 1000}, 2, 1, 64), cfg, attn::Options{});
  expect_error([&] { acu::moba_gate_shard(partial, dq.ptr, mall.ptr, 0, dsel.ptr); },
               "not a whole number of MoBA blocks of S = 128");
  acu::Plan ok(Layout::varlen({0, 1024}, 2, 1, 64), cfg, attn::Options{});
  expect_error([&] { acu::moba_gate_shard(ok, dq.ptr, mall.ptr, 1000, dsel.ptr); },
               "first position 1000 is not a non-negative multiple of S = 128");
  CUDA_CHECK(cudaDeviceSynchronize());
}

// v21: MOBA_GATE_ROWS=256 (two m-tiles of 16 query rows per warp, 256 rows a CTA; the same
// MMAs on the same operands in the same order) selects exactly what 128 rows and the default
// (`auto`, gate_rows_auto) do, on
// every list length (K 2..5 have the two-tile instance, K 8 and 16 fall back to one tile),
// head dims 64 and 128, block sizes 64..512, varlen with odd lengths, GQA, and sequences
// shorter than one 256-row tile; each selection also against the CPU gate. A bad value is
// an error naming it.
TEST(GateGpu, TwoMtilesPerWarpSameSelection) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device: GPU gate test skipped";
  struct Case {
    std::vector<int64_t> cu;
    int64_t Hq, Hkv, D, S, K;
  };
  const Case cases[] = {
      {{0, 8192}, 4, 2, 128, 128, 3},         {{0, 8192}, 2, 2, 64, 128, 3},
      {{0, 4100}, 2, 1, 128, 64, 2},          {{0, 5000}, 3, 1, 64, 256, 5},
      {{0, 6000}, 2, 2, 128, 128, 4},         {{0, 1, 300, 2900, 3160}, 4, 2, 128, 64, 3},
      {{0, 127, 5000, 5255}, 2, 1, 64, 128, 5}, {{0, 3000}, 2, 1, 128, 128, 8},
      {{0, 9000}, 2, 1, 64, 512, 3},          {{0, 2500}, 2, 1, 64, 64, 16},
  };
  int n = 0;
  for (const Case& cs : cases) {
    const Layout l = Layout::varlen(cs.cu, cs.Hq, cs.Hkv, cs.D);
    const MobaConfig cfg{cs.S, cs.K};
    GateInputs in(l, 300 + n, 400 + n);
    ++n;
    const auto &q = in.q, &k = in.k;
    auto &dq = in.dq, &dk = in.dk;
    acu::Plan plan(l, cfg, attn::Options{});
    std::vector<std::vector<int32_t>> sels;
    for (const char* rows : {"128", "256", "auto"}) {
      ScopedEnv env("MOBA_GATE_ROWS", rows);
      DeviceBuffer<int32_t> dsel(l.lse_elems() * cfg.top_k);
      dsel.poison();
      acu::moba_gate(plan, dq.ptr, dk.ptr, dsel.ptr);
      const cudaError_t err = cudaDeviceSynchronize();
      ASSERT_EQ(err, cudaSuccess) << "MOBA_GATE_ROWS=" << rows << ": " << cudaGetErrorString(err);
      sels.push_back(dsel.download());
    }
    SCOPED_TRACE("case " + std::to_string(n) + ": D " + std::to_string(cs.D) + ", S " +
                 std::to_string(cs.S) + ", K " + std::to_string(cs.K));
    EXPECT_TRUE(same_bytes(sels[1], sels[0])) << "MOBA_GATE_ROWS=256 selects differently";
    EXPECT_TRUE(same_bytes(sels[2], sels[0])) << "MOBA_GATE_ROWS=auto selects differently";
    check_gate(l, cfg, q, k, Selection{cfg.top_k, l.num_q_heads, sels[1]});
  }
  const Layout l = Layout::varlen({0, 1000}, 2, 1, 64);
  const MobaConfig cfg{128, 3};
  acu::Plan plan(l, cfg, attn::Options{});
  DeviceBuffer<acu::bf16> dq(l.q_elems()), dk(l.kv_elems());
  DeviceBuffer<int32_t> dsel(l.lse_elems() * cfg.top_k);
  ScopedEnv bad("MOBA_GATE_ROWS", "512");
  try {
    acu::moba_gate(plan, dq.ptr, dk.ptr, dsel.ptr);
    ADD_FAILURE() << "MOBA_GATE_ROWS=512 accepted";
  } catch (const moba::Error& e) {
    EXPECT_NE(std::string(e.what()).find("MOBA_GATE_ROWS=512"), std::string::npos) << e.what();
  }
  CUDA_CHECK(cudaDeviceSynchronize());
}

// The sm_90a MoBA forward (wgmma + TMA, fwd_wgmma.cuh; MOBA_MOBA_FWD=wgmma) against the
// mma.sync one (fwd_kernel.cuh, MOBA_MOBA_FWD=mma; wgmma is the default on sm_90) on one selection (the GPU
// gate's, computed once): out and lse of each against the fp64 CPU MoBA reference with the
// suite's bound, and |wgmma - mma|. Shapes: D 64 and 128; S 128, 256, 512 (and S = 64,
// where MOBA_MOBA_FWD=wgmma keeps the mma.sync kernels: the two runs must agree exactly);
// K 1 (no past block), 3, 8, 16 and K >= the number of blocks (then also against the
// dense forward); GQA 4:1 and MHA; varlen with odd lengths and sequence starts that are
// not multiples of 4 or 128; T not a multiple of S; 4096 tokens.
struct MobaFwdCase {
  const char* name;
  std::vector<int64_t> cu;
  int64_t Hq, Hkv, D, S, K;
};


class MobaWgmmaFwdGpu : public ::testing::TestWithParam<MobaFwdCase> {};

TEST_P(MobaWgmmaFwdGpu, MatchesReference) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device: GPU attention tests skipped";
  if (!is_sm90()) GTEST_SKIP() << "wgmma MoBA forward needs an sm_90 device";
  const MobaFwdCase& cs = GetParam();
  const Layout l = Layout::varlen(cs.cu, cs.Hq, cs.Hkv, cs.D);
  const MobaConfig cfg{cs.S, cs.K};
  const attn::Options opt;
  const double scale = opt.scale_for(l);
  Bf16Inputs in(l, 701);
  const auto &q = in.q, &k = in.k, &v = in.v, &dout = in.dout;
  auto &dq_in = in.dq_in, &dk_in = in.dk_in, &dv_in = in.dv_in;
  DeviceBuffer<acu::bf16> o_wg(q.size()), o_mma(q.size());
  DeviceBuffer<float> lse_wg(l.lse_elems()), lse_mma(l.lse_elems());
  DeviceBuffer<int32_t> dsel(l.lse_elems() * cfg.top_k);
  for (auto* b : {&o_wg, &o_mma}) b->poison();
  for (auto* b : {&lse_wg, &lse_mma}) b->poison();
  dsel.poison();
  acu::Plan plan(l, cfg, opt);
  acu::moba_gate(plan, dq_in.ptr, dk_in.ptr, dsel.ptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  const Selection sel{cfg.top_k, l.num_q_heads, dsel.download()};

  {
    ScopedEnv env("MOBA_MOBA_FWD", "wgmma");
    acu::moba_forward(plan, dsel.ptr, dq_in.ptr, dk_in.ptr, dv_in.ptr, o_wg.ptr, lse_wg.ptr);
    const cudaError_t err = cudaDeviceSynchronize();
    ASSERT_EQ(err, cudaSuccess) << "wgmma MoBA forward: " << cudaGetErrorString(err);
  }
  // The persistent kernels' grid does not change a bit of the result: one CTA per tile,
  // and 1 or 3 persistent CTAs (each then takes many tiles: both Q buffers, the ring's
  // phases across tiles, idle warpgroups of short tiles, tiles past a sequence's end)
  // against the default (one CTA per SM).
  for (const char* grid : {"tiles", "3", "1"}) {
    ScopedEnv env("MOBA_MOBA_FWD", "wgmma"), past("MOBA_MOBA_FWD_GRID", grid);
    DeviceBuffer<acu::bf16> o2(q.size());
    DeviceBuffer<float> lse2(l.lse_elems());
    o2.poison();
    lse2.poison();
    acu::moba_forward(plan, dsel.ptr, dq_in.ptr, dk_in.ptr, dv_in.ptr, o2.ptr, lse2.ptr);
    const cudaError_t err = cudaDeviceSynchronize();
    ASSERT_EQ(err, cudaSuccess) << "MOBA_MOBA_FWD_GRID=" << grid << ": " << cudaGetErrorString(err);
    EXPECT_TRUE(same_bytes(o2.download(), o_wg.download())) << "MOBA_MOBA_FWD_GRID=" << grid << ": out differs";
    EXPECT_TRUE(same_bytes(lse2.download(), lse_wg.download())) << "MOBA_MOBA_FWD_GRID=" << grid << ": lse differs";
  }
  {
    ScopedEnv env("MOBA_MOBA_FWD", "mma");
    acu::moba_forward(plan, dsel.ptr, dq_in.ptr, dk_in.ptr, dv_in.ptr, o_mma.ptr, lse_mma.ptr);
    CUDA_CHECK(cudaDeviceSynchronize());
  }

  std::vector<double> qd(q.begin(), q.end()), kd(k.begin(), k.end()), vd(v.begin(), v.end());
  std::vector<double> out(q.size()), lse(l.lse_elems());
  attn::cpu::moba_forward<double>(l, cfg, sel, opt, qd, kd, vd, out, lse);
  const NaiveResult nv = naive_bf16(l, cfg.block_size, &sel, scale, q, k, v, dout);
  const auto w_out = from_bf16(o_wg.download()), m_out = from_bf16(o_mma.download());
  const auto w_lse = lse_wg.download(), m_lse = lse_mma.download();
  std::printf("    wgmma MoBA forward:\n");
  expect_close("out", w_out, out, nv.out);
  expect_close("lse", w_lse, lse, nv.lse);
  std::printf("    mma.sync MoBA forward:\n");
  expect_close("out", m_out, out, nv.out);
  expect_close("lse", m_lse, lse, nv.lse);
  auto diff = [](const std::vector<float>& a, const std::vector<float>& b) {
    return max_rel_err(a, std::vector<double>(b.begin(), b.end()));
  };
  std::printf("    |wgmma - mma| out %.3e  lse %.3e\n", diff(w_out, m_out), diff(w_lse, m_lse));
  if (cs.S % 128 != 0) {  // MOBA_MOBA_FWD=wgmma keeps the mma.sync kernels here
    EXPECT_EQ(diff(w_out, m_out), 0.0);
    EXPECT_EQ(diff(w_lse, m_lse), 0.0);
  }

  // K covers every block: MoBA is dense causal attention.
  const int64_t blocks = (l.max_seq_len() + cfg.block_size - 1) / cfg.block_size;
  if (cs.K >= blocks) {
    DeviceBuffer<acu::bf16> o2(q.size());
    DeviceBuffer<float> lse2(l.lse_elems());
    o2.poison();
    acu::dense_forward(plan, dq_in.ptr, dk_in.ptr, dv_in.ptr, o2.ptr, lse2.ptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    const double d = diff(from_bf16(o2.download()), w_out);
    std::printf("    K >= blocks: |wgmma MoBA - dense| out %.3e\n", d);
    EXPECT_LE(d, bound_for(max_rel_err(nv.out, out)));
  }
}

const MobaFwdCase kMobaFwdCases[] = {
    {"mw_gqa4_d128_s128_k3", {0, 1000}, 4, 1, 128, 128, 3},
    {"mw_mha_d64_s128_k8", {0, 1300}, 2, 2, 64, 128, 8},
    {"mw_k1_d128_s256", {0, 700}, 2, 1, 128, 256, 1},
    {"mw_gqa4_d64_s512_k3", {0, 3000}, 4, 1, 64, 512, 3},
    {"mw_k_ge_blocks_d128", {0, 900}, 2, 2, 128, 128, 8},
    {"mw_varlen_d64_s128_k3", {0, 1, 78, 600, 1777}, 4, 1, 64, 128, 3},
    {"mw_varlen_d128_s256_k3", {0, 1, 78, 600, 1777}, 2, 1, 128, 256, 3},
    {"mw_odd_d128_s128_k4", {0, 127, 128, 385}, 2, 2, 128, 128, 4},
    {"mw_odd_d64_s256_k8", {0, 127, 128, 385}, 3, 3, 64, 256, 8},
    {"mw_k16_d64_s128", {0, 2500}, 2, 1, 64, 128, 16},
    {"mw_long_d128_s512_k3", {0, 4096}, 2, 1, 128, 512, 3},
    {"mw_s64_fallback_d128", {0, 500}, 2, 1, 128, 64, 3},
};

// v20 on the MoBA forward kernels (see DenseWgmmaGpu.PingPongBitEqual).
TEST_P(MobaWgmmaFwdGpu, PingPongBitEqual) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device: GPU attention tests skipped";
  if (!is_sm90()) GTEST_SKIP() << "wgmma MoBA forward needs an sm_90 device";
  const MobaFwdCase& cs = GetParam();
  const Layout l = Layout::varlen(cs.cu, cs.Hq, cs.Hkv, cs.D);
  const MobaConfig cfg{cs.S, cs.K};
  Bf16Inputs in(l, 701);
  DeviceBuffer<int32_t> dsel(l.lse_elems() * cfg.top_k);
  acu::Plan plan(l, cfg, attn::Options{});
  acu::moba_gate(plan, in.dq_in.ptr, in.dk_in.ptr, dsel.ptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  for (const char* grid : {"", "3", "1"}) {
    std::vector<std::vector<acu::bf16>> outs;
    std::vector<std::vector<float>> lses;
    for (const char* pp : {"0", "1"}) {
      ScopedEnv fam("MOBA_MOBA_FWD", "wgmma"), g("MOBA_MOBA_FWD_GRID", grid),
          ping("MOBA_FWD_PINGPONG", pp);
      DeviceBuffer<acu::bf16> o(in.q.size());
      DeviceBuffer<float> lse(l.lse_elems());
      o.poison();
      lse.poison();
      acu::moba_forward(plan, dsel.ptr, in.dq_in.ptr, in.dk_in.ptr, in.dv_in.ptr, o.ptr, lse.ptr);
      const cudaError_t err = cudaDeviceSynchronize();
      ASSERT_EQ(err, cudaSuccess) << "MOBA_MOBA_FWD_GRID=" << grid << " MOBA_FWD_PINGPONG=" << pp
                                  << ": " << cudaGetErrorString(err);
      outs.push_back(o.download());
      lses.push_back(lse.download());
    }
    EXPECT_TRUE(same_bytes(outs[1], outs[0])) << "MOBA_MOBA_FWD_GRID=" << grid << ": ping-pong out differs";
    EXPECT_TRUE(same_bytes(lses[1], lses[0])) << "MOBA_MOBA_FWD_GRID=" << grid << ": ping-pong lse differs";
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, MobaWgmmaFwdGpu, ::testing::ValuesIn(kMobaFwdCases),
                         [](const auto& info) { return std::string(info.param.name); });

// The chunked forward (attention/fwd_chunks.h, docs/kernel_notes.md "v16"): the gather
// index, past blocks and current block + merge per chunk of query tokens must give the
// single pass's out and lse bit for bit (each query row's arithmetic is the same), for
// chunks that split sequences mid-way, hold several sequences, equal the batch or exceed
// it; on both kernel families (sm_90a where it runs and S is a multiple of 128, and
// mma.sync); through the Plan option and the environment knob; with 1 and 3 persistent
// CTAs. Also: against the fp64 CPU reference; the plan's scratch equals fwd_scratch_bytes
// (the partials shrink to one chunk's); the backward after a chunked forward (which must
// build its own gather index) against the reference. v18 (one gather index for all chunks,
// its count and fill CTAs on pieces of <= kIndexPieceTokens tokens of one chunk): chunks of
// kIndexPieceTokens + G (two pieces in a chunk), the global-atomics count and fill
// (MOBA_GATHER_BINS=global) unchunked and chunked, and one plan whose chunk size changes
// between forwards (its pieces re-uploaded). v19 (the index's scan on several CTAs beyond
// kIndexScanBuckets buckets): the two chunk_scan_ctas cases.
struct ChunkCase {
  const char* name;
  std::vector<int64_t> cu;
  int64_t Hq, Hkv, D, S, K;
};

class MobaChunkFwdGpu : public ::testing::TestWithParam<ChunkCase> {};

TEST_P(MobaChunkFwdGpu, EqualsSinglePass) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device: GPU attention tests skipped";
  const ChunkCase& cs = GetParam();
  const Layout l = Layout::varlen(cs.cu, cs.Hq, cs.Hkv, cs.D);
  const MobaConfig cfg{cs.S, cs.K};
  const attn::Options opt;
  const double scale = opt.scale_for(l);
  Bf16Inputs in(l, 801);
  const auto &q = in.q, &k = in.k, &v = in.v, &dout = in.dout;
  auto &dq_in = in.dq_in, &dk_in = in.dk_in, &dv_in = in.dv_in, &ddo = in.ddo;
  DeviceBuffer<int32_t> dsel(l.lse_elems() * cfg.top_k);
  {
    acu::Plan gate_plan(l, cfg, opt);
    acu::moba_gate(gate_plan, dq_in.ptr, dk_in.ptr, dsel.ptr);
    CUDA_CHECK(cudaDeviceSynchronize());
  }
  const Selection sel{cfg.top_k, l.num_q_heads, dsel.download()};
  std::vector<double> qd(q.begin(), q.end()), kd(k.begin(), k.end()), vd(v.begin(), v.end()),
      dod(dout.begin(), dout.end());
  std::vector<double> out(q.size()), lse(l.lse_elems()), rdq(q.size()), rdk(k.size()), rdv(v.size());
  attn::cpu::moba_forward<double>(l, cfg, sel, opt, qd, kd, vd, out, lse);
  attn::cpu::moba_backward<double>(l, cfg, sel, opt, qd, kd, vd, out, lse, dod, rdq, rdk, rdv);
  const NaiveResult nv = naive_bf16(l, cfg.block_size, &sel, scale, q, k, v, dout);
  const int64_t N = l.tokens(), G = attn::fwd_chunk_granule(cfg);
  const int64_t whole = (N + G - 1) / G * G;  // the batch rounded up: N itself where G divides it
  const int64_t sizes[] = {G, 2 * G, 3 * G, attn::kIndexPieceTokens + G, whole, whole + G};
  const bool wg_ok = is_sm90() && cs.S % 128 == 0;
  for (const char* family : {"wgmma", "mma"}) {
    if (std::strcmp(family, "wgmma") == 0 && !wg_ok) continue;
    SCOPED_TRACE(std::string("MOBA_MOBA_FWD=") + family);
    ScopedEnv fam("MOBA_MOBA_FWD", family), off(attn::kFwdChunkEnv, "");
    // The single pass (option 0, whatever the environment says).
    attn::Options o0;
    o0.fwd_chunk_tokens = 0;
    acu::Plan ref_plan(l, cfg, o0);
    DeviceBuffer<acu::bf16> o_ref(q.size());
    DeviceBuffer<float> lse_ref(l.lse_elems());
    o_ref.poison();
    lse_ref.poison();
    acu::moba_forward(ref_plan, dsel.ptr, dq_in.ptr, dk_in.ptr, dv_in.ptr, o_ref.ptr, lse_ref.ptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    EXPECT_EQ(ref_plan.workspace_bytes(),
              static_cast<size_t>(attn::fwd_scratch_bytes(l, cfg, 0).total()));
    const auto ref_o = o_ref.download();
    const auto ref_lse = lse_ref.download();
    std::printf("    %s single pass:\n", family);
    expect_close("out", from_bf16(ref_o), out, nv.out);
    expect_close("lse", ref_lse, lse, nv.lse);

    // A forward in chunks of C tokens (the Plan option, or the environment knob), compared
    // bit for bit with the single pass.
    DeviceBuffer<acu::bf16> o(q.size());
    DeviceBuffer<float> ls(l.lse_elems());
    // One forward on plan, compared bit for bit with the single pass.
    auto forward_equals_single_pass = [&](acu::Plan& plan) {
      o.poison();
      ls.poison();
      acu::moba_forward(plan, dsel.ptr, dq_in.ptr, dk_in.ptr, dv_in.ptr, o.ptr, ls.ptr);
      const cudaError_t err = cudaDeviceSynchronize();
      ASSERT_EQ(err, cudaSuccess) << cudaGetErrorString(err);
      EXPECT_TRUE(same_bytes(o.download(), ref_o)) << "out differs from the single pass";
      EXPECT_TRUE(same_bytes(ls.download(), ref_lse)) << "lse differs from the single pass";
    };
    // The backward on plan, after its forward (o, ls), against the reference.
    auto backward_matches_reference = [&](acu::Plan& plan, const std::string& what) {
      DeviceBuffer<acu::bf16> gq(q.size()), gk(k.size()), gv(v.size());
      gq.poison();
      gk.poison();
      gv.poison();
      acu::moba_backward(plan, dsel.ptr, dq_in.ptr, dk_in.ptr, dv_in.ptr, o.ptr, ls.ptr, ddo.ptr,
                         gq.ptr, gk.ptr, gv.ptr);
      CUDA_CHECK(cudaDeviceSynchronize());
      std::printf("    %s %s:\n", family, what.c_str());
      expect_close("dq", from_bf16(gq.download()), rdq, nv.dq);
      expect_close("dk", from_bf16(gk.download()), rdk, nv.dk);
      expect_close("dv", from_bf16(gv.download()), rdv, nv.dv);
    };
    auto chunked = [&](int64_t C, bool by_env, const char* grid, bool global_bins = false) {
      SCOPED_TRACE("chunk " + std::to_string(C) + (by_env ? " (environment)" : " (option)") +
                   (grid ? std::string(" MOBA_MOBA_FWD_GRID=") + grid : std::string()) +
                   (global_bins ? " MOBA_GATHER_BINS=global" : ""));
      attn::Options oc;
      oc.fwd_chunk_tokens = by_env ? -1 : C;
      const std::string c_str = std::to_string(C);
      ScopedEnv knob(attn::kFwdChunkEnv, by_env ? c_str.c_str() : "");
      ScopedEnv g("MOBA_MOBA_FWD_GRID", grid ? grid : "");
      ScopedEnv bins("MOBA_GATHER_BINS", global_bins ? "global" : "");
      acu::Plan plan(l, cfg, oc);
      forward_equals_single_pass(plan);
      if (::testing::Test::HasFatalFailure()) return;
      const attn::FwdScratch fs = attn::fwd_scratch_bytes(l, cfg, C);
      EXPECT_EQ(plan.workspace_bytes(), static_cast<size_t>(fs.total()));
      std::printf("    %s chunk %lld%s: %zu chunks, scratch %.2f MiB (single pass %.2f)\n",
                  family, static_cast<long long>(C), global_bins ? " (global bins)" : "",
                  attn::fwd_chunks(l, cfg, C).size(), fs.total() / 1048576.0,
                  attn::fwd_scratch_bytes(l, cfg, 0).total() / 1048576.0);
      if (by_env) {
        // The same plan, the environment's chunk size changed: the index's pieces follow.
        const std::string c2 = std::to_string(2 * C);
        ScopedEnv knob2(attn::kFwdChunkEnv, c2.c_str());
        SCOPED_TRACE("then chunk " + c2 + " on the same plan");
        forward_equals_single_pass(plan);
        ScopedEnv knob3(attn::kFwdChunkEnv, c_str.c_str());
        SCOPED_TRACE("then chunk " + c_str + " again");
        forward_equals_single_pass(plan);
      }
      if (C != G || by_env || grid || global_bins) return;
      // The backward after a chunked forward (its own gather index) against the reference.
      backward_matches_reference(plan, "backward after the chunked forward");
    };
    for (int64_t C : sizes) chunked(C, false, nullptr);
    chunked(G, true, nullptr);
    for (int64_t C : {int64_t{0}, G, attn::kIndexPieceTokens + G}) chunked(C, false, nullptr, true);
    // A bad knob is an error naming its value, raised before any launch. (At K 1 no query
    // has a past block: the forward builds no gather index and reads no knob.)
    auto bad_knob = [&](const char* name, const char* value, int64_t chunk) {
      if (cfg.top_k <= 1) return;
      ScopedEnv bad(name, value);
      attn::Options oc;
      oc.fwd_chunk_tokens = chunk;
      acu::Plan plan(l, cfg, oc);
      const std::string said = std::string(name) + "=" + value;
      try {
        acu::moba_forward(plan, dsel.ptr, dq_in.ptr, dk_in.ptr, dv_in.ptr, o.ptr, ls.ptr);
        ADD_FAILURE() << said << " accepted";
      } catch (const moba::Error& e) {
        EXPECT_NE(std::string(e.what()).find(said), std::string::npos) << e.what();
      }
      CUDA_CHECK(cudaDeviceSynchronize());
    };
    bad_knob("MOBA_GATHER_BINS", "atomics", G);
    if (std::strcmp(family, "wgmma") == 0)
      for (const char* grid : {"1", "3"}) chunked(2 * G, false, grid);
    // v22: the single pass's index on pieces of 256 and of 2048 tokens, out and lse bit for
    // bit the default's (`auto`, index_piece_tokens_auto: each row's arithmetic does not
    // depend on where its entries sit in a bucket); then the backward on 256-token pieces
    // against the reference. A bad value is an error naming it.
    for (const char* piece : {"256", "2048"}) {
      SCOPED_TRACE(std::string("MOBA_INDEX_PIECE_TOKENS=") + piece);
      ScopedEnv knob("MOBA_INDEX_PIECE_TOKENS", piece);
      acu::Plan plan(l, cfg, o0);
      forward_equals_single_pass(plan);
      if (::testing::Test::HasFatalFailure()) return;
      if (std::strcmp(piece, "256") == 0)
        backward_matches_reference(plan, "backward on 256-token index pieces");
    }
    bad_knob("MOBA_INDEX_PIECE_TOKENS", "300", 0);
  }
}

const ChunkCase kChunkCases[] = {
    {"chunk_d128_s512_k3", {0, 4096}, 2, 1, 128, 512, 3},
    {"chunk_gqa4_d64_s128_k2", {0, 3000}, 4, 1, 64, 128, 2},
    {"chunk_d128_s128_k8", {0, 2500}, 2, 2, 128, 128, 8},
    {"chunk_k1_d64_s256", {0, 1000}, 2, 1, 64, 256, 1},
    {"chunk_varlen_d64_s128_k3", {0, 1, 78, 600, 1777, 1778, 3100}, 4, 1, 64, 128, 3},
    {"chunk_varlen_d128_s256_k3", {0, 1, 78, 600, 1777, 3100}, 2, 1, 128, 256, 3},
    {"chunk_varlen_d128_s128_k8", {0, 300, 1300, 1301, 2900}, 2, 2, 128, 128, 8},
    {"chunk_s64_d128_k3", {0, 1500}, 2, 1, 128, 64, 3},
    {"chunk_varlen_s64_d64_k8", {0, 200, 777, 1500}, 2, 2, 64, 64, 8},
    // Longer than kIndexPieceTokens + G: chunks of two count / fill pieces, varlen (named
    // outside perf_session.sh's memcheck filter *varlen_d64*, for time: chunk_varlen_d64's
    // chunks of 2048 + G hold two pieces too).
    {"chunk_long_varlen_s128_d64_k3", {0, 5, 2100, 2101, 6000}, 2, 1, 64, 128, 3},
    // v19: more than kIndexScanBuckets (4096) chunks x full blocks x kv heads, so that the
    // index's scan runs on several CTAs: 8648 buckets at C = G = 128 (3 CTAs), 4416 at 2G
    // (2), one CTA from 3G (mma.sync only: S 64; memcheck's *varlen_s64* filter takes it);
    // 17484 at C = G on both families (5 CTAs).
    {"chunk_scan_ctas_varlen_s64_d64_k3", {0, 3000, 6000}, 2, 2, 64, 64, 3},
    {"chunk_scan_ctas_s128_d128_k3", {0, 12000}, 2, 2, 128, 128, 3},
};

INSTANTIATE_TEST_SUITE_P(Shapes, MobaChunkFwdGpu, ::testing::ValuesIn(kChunkCases),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace moba::test
