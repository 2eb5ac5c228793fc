// Long contexts on the GPU (issue 16): the attention kernels past 2^31 elements per tensor,
// where every (token, head, dim) offset needs 64 bits (the plan refused these sizes
// before v14). Whole-tensor references are out of reach at these sizes, so each test
// checks sampled rows against an fp64 CPU reference computed for those rows only:
//   - the gate: the GPU's selection of every sampled (token, head) against moba_gate_part
//     on the CPU, from the same bf16 inputs (block means of all of K on the CPU), allowing
//     a different pick only for an fp32 rounding tie (as attention_gpu_test's check_gate);
//   - out, lse and dQ of the sampled rows over the GPU's selection (the check above made
//     sure it is the gate's), in fp64;
//   - dK and dV of a few whole (block, kv head) targets. A key's gradient sums over every
//     query that attends to it, so the test finds those queries: the block's own queries
//     (the causal current block) and every (token, head) whose GPU selection lists the
//     block as a past slot (a scan of the downloaded selection). For each such query the
//     reference recomputes its whole row (lse and delta = dout . out over all its keys, in
//     fp64) and adds its contribution to the target keys; nothing is taken from the GPU
//     but the selection, so a wrong dK/dV cannot hide behind a wrong lse or out.
// The bound is the suite's (attention_gpu_test, naive_bf16.h): a kernel's error against
// fp64 is at most twice that of the naive bf16 implementation on the same rows, plus 1e-5.
// The sampled tokens spread over the sequence and include its last ones (the largest
// offsets). Each MoBA test runs the default kernels (wgmma on sm_90) and the mma.sync ones
// (MOBA_MOBA_FWD / MOBA_MOBA_BWD = mma) on the same inputs.
// Cases: MoBA training at 2M tokens; MoBA prefill at 10M (S 512, K 3, one pass) and the
// paper's S 4096, K 12 at 1M and 10M (chunked forward); the dense forward's lse at 1M keys;
// dense training at 2M.
// Needs a GPU with about 115 GiB (2M-token training) or 127 GiB (10M-token prefill) free
// (an H200): with less the test skips and says how much it needed; without a device it
// skips as the other GPU tests. Host memory: about 40 GiB.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <string>
#include <vector>

#include "attention/cuda/attention_cuda.h"
#include "attention/gate.h"
#include "attention/layout.h"
#include "attention_gpu/device_buffer.h"
#include "attention_gpu/naive_bf16.h"
#include "attention_gpu/sampled_reference.h"
#include "core/cuda_check.cuh"
#include "scoped_env.h"

namespace moba::test {
namespace {

using attn::Layout;
using attn::MobaConfig;
namespace acu = attn::cuda;



constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;


void expect_bound(const char* what, const ErrAcc& e) {
  ASSERT_GT(e.count, 0u) << what << ": nothing sampled";
  ASSERT_TRUE(e.finite) << what << ": NaN or inf in a sampled element (left unwritten?)";
  const double eg = e.err / e.ref, en = e.n_err / e.ref, bound = 2.0 * en + 1e-5;
  std::printf("    %-4s %9zu elements  gpu err %.3e  naive bf16 err %.3e  bound %.3e\n", what,
              e.count, eg, en, bound);
  EXPECT_LE(eg, bound) << what;
}

// Per sampled row, its largest error over its largest reference value; the worst row kept.
// Rows that attend millions of keys have outputs (weighted means of many random values) and
// dq far below 1, where ErrAcc's scale max(1, |ref|) would pass wrong keys: this check is
// relative to each row's own size (bf16 output rounding alone is ~2^-9 of it).
struct RowRelAcc {
  double gpu = 0.0, naive = 0.0;
  size_t rows = 0;
  bool finite = true;
  void add_row(const Bits& g, const std::vector<float>& n, const std::vector<double>& r) {
    double eg = 0.0, en = 0.0, mr = 0.0;
    for (size_t d = 0; d < r.size(); ++d) {
      const double gv = bf16_value(g[d]);
      finite = finite && std::isfinite(gv);
      eg = std::max(eg, std::abs(gv - r[d]));
      en = std::max(en, std::abs(double(n[d]) - r[d]));
      mr = std::max(mr, std::abs(r[d]));
    }
    if (mr == 0.0) return;
    gpu = std::max(gpu, eg / mr);
    naive = std::max(naive, en / mr);
    ++rows;
  }
};

void expect_row_bound(const char* what, const RowRelAcc& e) {
  ASSERT_GT(e.rows, 0u) << what << ": no row sampled";
  ASSERT_TRUE(e.finite) << what << ": NaN or inf in a sampled row (left unwritten?)";
  const double bound = 2.0 * e.naive + 1e-5;
  std::printf("    %-4s %9zu rows, relative to each row's size: gpu err %.3e  naive bf16 err %.3e"
              "  bound %.3e\n", what, e.rows, e.gpu, e.naive, bound);
  EXPECT_LE(e.gpu, bound) << what << " (per row)";
}

// The GPU's slots of a sampled token (all heads) against the CPU gate (moba_gate_part on
// that one token): equal, or a different past pick that ties within fp32 rounding.
void check_gate_token(const Layout& l, const MobaConfig& cfg, const std::vector<float>& means,
                      int64_t tok, const std::vector<float>& q_row, const int32_t* gpu_slots) {
  const int64_t Hq = l.num_q_heads, Hkv = l.num_kv_heads, D = l.head_dim, K = cfg.top_k;
  const Layout one = Layout::batched(1, 1, Hq, Hkv, D);
  std::vector<int32_t> cpu(static_cast<size_t>(Hq * K));
  attn::moba_gate_part<float>(one, cfg, tok, q_row, means, cpu, tok);
  for (int64_t h = 0; h < Hq; ++h) {
    const int32_t* a = gpu_slots + h * K;
    const int32_t* c = &cpu[h * K];
    if (std::equal(a, a + K, c)) continue;
    ASSERT_EQ(a[K - 1], c[K - 1]) << "gate: current block differs at token " << tok << " head " << h;
    auto score = [&](int32_t j, double& mag) {
      const float* m = &means[(j * Hkv + h / (Hq / Hkv)) * D];
      double s = 0.0;
      mag = 0.0;
      for (int64_t d = 0; d < D; ++d) {
        s += double(q_row[h * D + d]) * m[d];
        mag += std::abs(double(q_row[h * D + d]) * m[d]);
      }
      return s;
    };
    double worst = INFINITY, mag = 0.0, m2 = 0.0;
    for (int64_t i = 0; i < K - 1; ++i) worst = std::min(worst, score(c[i], mag));
    for (int64_t i = 0; i < K - 1; ++i) {
      ASSERT_GE(a[i], 0) << "gate: token " << tok << " head " << h << " left slot " << i << " empty";
      const double s = score(a[i], m2);
      ASSERT_GE(s, worst - 1e-5 * std::max(mag, m2))
          << "gate: token " << tok << " head " << h << " picked block " << a[i]
          << ", no tie with the CPU gate's picks";
    }
  }
}

// ---------------------------------------------------------------------------------------
// MoBA training step on one sequence of 2,097,152 tokens, H 16, D 128, S 512, K 3: gate,
// forward, backward on one plan (as the trainer), N * H * D = 2^32 elements per tensor.
TEST(LongContextGpu, MobaTrain2MTokens) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device: GPU long-context tests skipped";
  const int64_t N = 2097152, H = 16, D = 128, S = 512, K = 3;
  const Layout l = Layout::batched(1, N, H, H, D);
  const MobaConfig cfg{S, K};
  const attn::Options opt;
  const double scale = opt.scale_for(l);
  const size_t qn = l.q_elems(), kvn = l.kv_elems(), rows = l.lse_elems();
  // q k v out dout dq dk dv (bf16), fp32 partial outputs and dQ accumulator, selection,
  // lse, scratch lists, and 2 GiB of slack.
  const double need = 2.0 * (qn * 5 + kvn * 3) + 4.0 * (qn * (K - 1) + qn) +
                      4.0 * rows * (K + 1 + 4) + 2.0 * kGiB;
  if (static_cast<double>(free_device_bytes()) < need)
    GTEST_SKIP() << "needs about " << need / kGiB << " GiB of device memory, "
                 << free_device_bytes() / kGiB << " GiB free";

  DeviceBuffer<acu::bf16> q(qn), k(kvn), v(kvn), dout(qn), o(qn), dq(qn), dk(kvn), dv(kvn);
  DeviceBuffer<float> lse(rows);
  DeviceBuffer<int32_t> sel(rows * K);
  acu::fill_random_bf16(q.ptr, qn, 101);
  acu::fill_random_bf16(k.ptr, kvn, 102);
  acu::fill_random_bf16(v.ptr, kvn, 103);
  acu::fill_random_bf16(dout.ptr, qn, 104);
  sel.poison();
  acu::Plan plan(l, cfg, opt);
  acu::moba_gate(plan, q.ptr, k.ptr, sel.ptr);
  CUDA_CHECK(cudaDeviceSynchronize());

  // Host copies (about 33 GiB): every query's q and dout are needed for dK/dV.
  HostKV kv{k.download<uint16_t>(0, kvn), v.download<uint16_t>(0, kvn), H, D};
  const Bits hq = q.download<uint16_t>(0, qn), hdo = dout.download<uint16_t>(0, qn);
  const std::vector<int32_t> hsel = sel.download<int32_t>(0, rows * K);

  // Gate on the sampled tokens.
  const std::vector<int64_t> toks = sample_tokens(N, S, 56);
  const std::vector<float> means = host_block_means(kv, N, S);
  for (int64_t t : toks) {
    check_gate_token(l, cfg, means, t, to_float(&hq[t * H * D], H * D), &hsel[t * H * K]);
    if (HasFatalFailure()) return;
  }
  std::printf("    gate: %zu sampled tokens x %lld heads agree with the CPU gate\n", toks.size(),
              static_cast<long long>(H));

  // References: rows of the sampled tokens (every head), then dK/dV targets.
  struct Sample {
    int64_t tok, h;
    RowResult r;
  };
  std::vector<Sample> samples;
  for (int64_t t : toks)
    for (int64_t h = 0; h < H; ++h) samples.push_back({t, h, {}});
#pragma omp parallel for schedule(dynamic, 4)
  for (size_t i = 0; i < samples.size(); ++i) {
    Sample& s = samples[i];
    const size_t row = static_cast<size_t>(s.tok * H + s.h);
    const auto qf = to_float(&hq[row * D], D), df = to_float(&hdo[row * D], D);
    s.r = row_reference(kv, s.h, key_ranges(&hsel[row * K], K, S, s.tok), qf.data(), df.data(),
                        scale);
  }
  // Targets (block, kv head): the first block (a past pick of many queries), a middle one,
  // the second last (past block of the last block's queries only) and the last.
  const int64_t nb = N / S;
  const int64_t targets[][2] = {{0, 3}, {nb / 2 + 1, 0}, {nb - 2, 15}, {nb - 1, 9}};
  std::vector<KeyGrads> grads(std::size(targets));
  for (size_t ti = 0; ti < grads.size(); ++ti) {
    const int64_t blk = targets[ti][0], kvh = targets[ti][1];
    KeyGrads& g = grads[ti];
    g.init(blk * S, (blk + 1) * S, kvh, D);
    // The queries of head kvh (MHA) attending the block: its own (causal), and those
    // whose selection lists it as a past block.
    std::vector<int64_t> users;
    for (int64_t t = blk * S; t < (blk + 1) * S; ++t) users.push_back(t);
    for (int64_t t = (blk + 1) * S; t < N; ++t) {
      const int32_t* sl = &hsel[(t * H + kvh) * K];
      for (int64_t i = 0; i < K - 1; ++i)
        if (sl[i] == blk) users.push_back(t);
    }
    std::printf("    dK/dV target block %lld, kv head %lld: %zu queries attend it\n",
                static_cast<long long>(blk), static_cast<long long>(kvh), users.size());
#pragma omp parallel
    {
      KeyGrads local;
      local.init(g.k0, g.k1, kvh, D);
#pragma omp for schedule(dynamic, 16)
      for (size_t ui = 0; ui < users.size(); ++ui) {
        const int64_t t = users[ui];
        const size_t row = static_cast<size_t>(t * H + kvh);
        const auto keys = key_ranges(&hsel[row * K], K, S, t);
        const auto qf = to_float(&hq[row * D], D), df = to_float(&hdo[row * D], D);
        const RowResult r = row_reference(kv, kvh, keys, qf.data(), df.data(), scale);
        add_key_grads(kv, keys, qf.data(), df.data(), scale, r, local);
      }
#pragma omp critical
      g.add(local);
    }
    g.finish(scale);
  }

  // Forward and backward on each path, compared on the samples and the targets.
  auto run_and_check = [&](const char* path) {
    for (auto* b : {&o, &dq, &dk, &dv}) b->poison();
    lse.poison();
    acu::moba_forward(plan, sel.ptr, q.ptr, k.ptr, v.ptr, o.ptr, lse.ptr);
    acu::moba_backward(plan, sel.ptr, q.ptr, k.ptr, v.ptr, o.ptr, lse.ptr, dout.ptr, dq.ptr,
                       dk.ptr, dv.ptr);
    const cudaError_t err = cudaDeviceSynchronize();
    ASSERT_EQ(err, cudaSuccess) << path << ": " << cudaGetErrorString(err);
    std::printf("    %s kernels (plan workspace peak %.2f GiB):\n", path,
                plan.peak_workspace_bytes() / kGiB);
    ErrAcc e_out, e_lse, e_dq, e_dk, e_dv;
    RowRelAcc r_out, r_dq;
    for (const Sample& s : samples) {
      const size_t row = static_cast<size_t>(s.tok * H + s.h);
      const Bits go = o.download<uint16_t>(row * D, D), gq = dq.download<uint16_t>(row * D, D);
      const float gl = lse.download<float>(row, 1)[0];
      e_lse.add(gl, s.r.n_lse, s.r.lse);
      for (int64_t d = 0; d < D; ++d) {
        e_out.add(bf16_value(go[d]), s.r.n_out[d], s.r.out[d]);
        e_dq.add(bf16_value(gq[d]), s.r.n_dq[d], s.r.dq[d]);
      }
      r_out.add_row(go, s.r.n_out, s.r.out);
      r_dq.add_row(gq, s.r.n_dq, s.r.dq);
    }
    for (const KeyGrads& g : grads) {
      const size_t first = static_cast<size_t>(g.k0 * H * D), count = static_cast<size_t>((g.k1 - g.k0) * H * D);
      const Bits gk = dk.download<uint16_t>(first, count), gv = dv.download<uint16_t>(first, count);
      for (int64_t j = g.k0; j < g.k1; ++j)
        for (int64_t d = 0; d < D; ++d) {
          const size_t at = static_cast<size_t>(((j - g.k0) * H + g.kvh) * D + d);
          const size_t r = static_cast<size_t>((j - g.k0) * D + d);
          e_dk.add(bf16_value(gk[at]), g.n_dk[r], g.dk[r]);
          e_dv.add(bf16_value(gv[at]), g.n_dv[r], g.dv[r]);
        }
    }
    expect_bound("out", e_out);
    expect_bound("lse", e_lse);
    expect_bound("dq", e_dq);
    expect_bound("dk", e_dk);
    expect_bound("dv", e_dv);
    expect_row_bound("out", r_out);
    expect_row_bound("dq", r_dq);
  };
  run_and_check("default");
  {
    ScopedEnv f("MOBA_MOBA_FWD", "mma"), b("MOBA_MOBA_BWD", "mma");
    run_and_check("mma.sync");
  }
}

// ---------------------------------------------------------------------------------------
// A MoBA prefill (gate and forward) of one sequence of N tokens, Hq query heads on Hkv, the
// forward in chunks of `chunk` query tokens (0: one pass): ~56 sampled tokens' gate against
// the CPU gate and their rows (every head) against the fp64 reference over the GPU's
// selection, on the default (wgmma) and the mma.sync kernels.
void prefill_check(int64_t N, int64_t Hq, int64_t Hkv, int64_t D, int64_t S, int64_t K,
                   int64_t chunk) {
  const Layout l = Layout::batched(1, N, Hq, Hkv, D);
  const MobaConfig cfg{S, K};
  attn::Options opt;
  opt.fwd_chunk_tokens = chunk;
  const double scale = opt.scale_for(l);
  const size_t qn = l.q_elems(), kvn = l.kv_elems(), rows = l.lse_elems();
  // q out k v (bf16), fp32 partial outputs (one chunk's), selection, lse, lists, 2 GiB slack.
  const double part_rows = static_cast<double>(chunk > 0 ? std::min(chunk, N) : N) * Hq;
  const double need = 2.0 * (qn * 2 + kvn * 2) + 4.0 * part_rows * D * (K - 1) +
                      4.0 * rows * (K + 1 + 4) + 2.0 * kGiB;
  if (static_cast<double>(free_device_bytes()) < need)
    GTEST_SKIP() << "needs about " << need / kGiB << " GiB of device memory, "
                 << free_device_bytes() / kGiB << " GiB free";

  DeviceBuffer<acu::bf16> q(qn), k(kvn), v(kvn), o(qn);
  DeviceBuffer<float> lse(rows);
  DeviceBuffer<int32_t> sel(rows * K);
  acu::fill_random_bf16(q.ptr, qn, 201);
  acu::fill_random_bf16(k.ptr, kvn, 202);
  acu::fill_random_bf16(v.ptr, kvn, 203);
  sel.poison();
  acu::Plan plan(l, cfg, opt);
  acu::moba_gate(plan, q.ptr, k.ptr, sel.ptr);
  CUDA_CHECK(cudaDeviceSynchronize());

  HostKV kv{k.download<uint16_t>(0, kvn), v.download<uint16_t>(0, kvn), Hkv, D};
  const std::vector<int64_t> toks = sample_tokens(N, S, 56);
  const std::vector<float> means = host_block_means(kv, N, S);
  struct Sample {
    int64_t tok, h;
    std::vector<int32_t> slots;
    std::vector<float> q;
    RowResult r;
  };
  std::vector<Sample> samples;
  for (int64_t t : toks) {
    const std::vector<float> q_row = to_float(q.download<uint16_t>(t * Hq * D, Hq * D).data(), Hq * D);
    const std::vector<int32_t> slots = sel.download<int32_t>(t * Hq * K, Hq * K);
    check_gate_token(l, cfg, means, t, q_row, slots.data());
    if (::testing::Test::HasFatalFailure()) return;
    for (int64_t h = 0; h < Hq; ++h)
      samples.push_back({t, h, std::vector<int32_t>(slots.begin() + h * K, slots.begin() + (h + 1) * K),
                         std::vector<float>(q_row.begin() + h * D, q_row.begin() + (h + 1) * D), {}});
  }
  std::printf("    gate: %zu sampled tokens x %lld heads agree with the CPU gate\n", toks.size(),
              static_cast<long long>(Hq));
#pragma omp parallel for schedule(dynamic, 4)
  for (size_t i = 0; i < samples.size(); ++i) {
    Sample& s = samples[i];
    s.r = row_reference(kv, s.h / (Hq / Hkv), key_ranges(s.slots.data(), K, S, s.tok), s.q.data(),
                        nullptr, scale);
  }

  auto run_and_check = [&](const char* path) {
    o.poison();
    lse.poison();
    acu::moba_forward(plan, sel.ptr, q.ptr, k.ptr, v.ptr, o.ptr, lse.ptr);
    const cudaError_t err = cudaDeviceSynchronize();
    ASSERT_EQ(err, cudaSuccess) << path << ": " << cudaGetErrorString(err);
    std::printf("    %s kernels (plan workspace peak %.2f GiB):\n", path,
                plan.peak_workspace_bytes() / kGiB);
    ErrAcc e_out, e_lse;
    RowRelAcc r_out;
    for (const Sample& s : samples) {
      const size_t row = static_cast<size_t>(s.tok * Hq + s.h);
      const Bits go = o.download<uint16_t>(row * D, D);
      e_lse.add(lse.download<float>(row, 1)[0], s.r.n_lse, s.r.lse);
      for (int64_t d = 0; d < D; ++d) e_out.add(bf16_value(go[d]), s.r.n_out[d], s.r.out[d]);
      r_out.add_row(go, s.r.n_out, s.r.out);
    }
    expect_bound("out", e_out);
    expect_bound("lse", e_lse);
    expect_row_bound("out", r_out);
  };
  run_and_check("default");
  {
    ScopedEnv f("MOBA_MOBA_FWD", "mma");
    run_and_check("mma.sync");
  }
}

// Prefill of one sequence of 10,000,000 tokens (not a multiple of S: the last block is
// partial) with grouped-query attention, Hq 8, Hkv 2, D 128, S 512, K 3: gate and forward.
// The gate's 78,125 row tiles exceed gridDim.y (65,535): two launches.
TEST(LongContextGpu, MobaPrefill10MTokensGqa) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device: GPU long-context tests skipped";
  prefill_check(10000000, 8, 2, 128, 512, 3, 0);
}

// The paper's long-context MoBA (S 4096, K 12: 11 past blocks of 4096 keys a query) on the
// chunked forward, as `bench/perf_session.sh`'s prefill10m times it: 1M tokens (256 blocks)
// and 10M (2442 blocks, the last partial), Hq 8, Hkv 2, D 128, chunks of 64K query tokens
// (the single pass's fp32 partials would be 45 and 450 GB).
TEST(LongContextGpu, MobaPrefillPaperBlocksChunked) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device: GPU long-context tests skipped";
  std::printf("  1M tokens:\n");
  prefill_check(1048576, 8, 2, 128, 4096, 12, 65536);
  if (HasFatalFailure() || IsSkipped()) return;
  std::printf("  10M tokens:\n");
  prefill_check(10000000, 8, 2, 128, 4096, 12, 65536);
}

// ---------------------------------------------------------------------------------------
// The dense forward's lse over a million keys, both kernels (wgmma and mma.sync), D 64 and
// 128, GQA (2 query heads on 1 kv head). A fast guard (about a second of GPU, seconds of CPU)
// for the online softmax's rescale: exp2f(fmaf(old max, scale_log2, -m_use)) was not 1 while
// the max held but 2^(m_use's rounding residual), up to 1 + 1.7e-7 and of one sign, so
// row_sum and o gained that factor per key tile: o / row_sum stayed right, the lse drifted
// with the number of tiles (2.2e-3 nats at 2M keys, found by DenseTrain2MTokens on the H200,
// 2026-12-03; about half that at 1M). Rows of the last tokens and 16 spread over the second
// half, each against the fp64 reference over all its keys.
TEST(LongContextGpu, DenseLseOverAMillionKeys) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device: GPU long-context tests skipped";
  const int64_t N = 1048576, Hq = 2, Hkv = 1;
  for (const int64_t D : {int64_t{64}, int64_t{128}}) {
    SCOPED_TRACE("D " + std::to_string(D));
    const Layout l = Layout::batched(1, N, Hq, Hkv, D);
    const attn::Options opt;
    const double scale = opt.scale_for(l);
    const size_t qn = l.q_elems(), kvn = l.kv_elems(), rows = l.lse_elems();
    DeviceBuffer<acu::bf16> q(qn), k(kvn), v(kvn), o(qn);
    DeviceBuffer<float> lse(rows);
    acu::fill_random_bf16(q.ptr, qn, 401 + D);
    acu::fill_random_bf16(k.ptr, kvn, 402 + D);
    acu::fill_random_bf16(v.ptr, kvn, 403 + D);
    acu::Plan plan(l, MobaConfig{64, 1}, opt);
    HostKV kv{k.download<uint16_t>(0, kvn), v.download<uint16_t>(0, kvn), Hkv, D};
    struct Sample {
      int64_t tok, h;
      std::vector<float> q;
      RowResult r;
    };
    std::vector<Sample> samples;
    for (int64_t i = 0; i < 16; ++i) samples.push_back({N / 2 + i * (N / 2 - 1) / 15, i % Hq, {}, {}});
    for (int64_t t = N - 4; t < N; ++t)
      for (int64_t h = 0; h < Hq; ++h) samples.push_back({t, h, {}, {}});
    for (Sample& s : samples)
      s.q = to_float(q.download<uint16_t>(static_cast<size_t>(s.tok * Hq + s.h) * D, D).data(), D);
#pragma omp parallel for schedule(dynamic, 1)
    for (size_t i = 0; i < samples.size(); ++i)
      samples[i].r = row_reference(kv, 0, key_ranges(nullptr, 0, 0, samples[i].tok), samples[i].q.data(),
                                   nullptr, scale);
    for (const char* path : {"wgmma", "mma"}) {
      SCOPED_TRACE(path);
      ScopedEnv kernel("MOBA_DENSE_FWD", path);
      o.poison();
      lse.poison();
      acu::dense_forward(plan, q.ptr, k.ptr, v.ptr, o.ptr, lse.ptr);
      const cudaError_t err = cudaDeviceSynchronize();
      ASSERT_EQ(err, cudaSuccess) << cudaGetErrorString(err);
      std::printf("    D %lld, %s kernel, %zu rows:\n", static_cast<long long>(D), path, samples.size());
      ErrAcc e_lse;
      RowRelAcc r_out;
      for (const Sample& s : samples) {
        const size_t row = static_cast<size_t>(s.tok * Hq + s.h);
        e_lse.add(lse.download<float>(row, 1)[0], s.r.n_lse, s.r.lse);
        r_out.add_row(o.download<uint16_t>(row * D, D), s.r.n_out, s.r.out);
      }
      expect_bound("lse", e_lse);
      expect_row_bound("out", r_out);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Dense causal attention (the full layers of a hybrid model) forward and backward on one
// sequence of 2,097,152 tokens, H 16, D 128 (default kernels). Rows here attend up to 2M
// keys, so fewer are sampled: 32 (token, head) pairs spread over the sequence, and dK/dV
// of the last 64 keys of one head (their queries are the last 64 tokens: each row's whole
// reference is recomputed as above).
TEST(LongContextGpu, DenseTrain2MTokens) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device: GPU long-context tests skipped";
  const int64_t N = 2097152, H = 16, D = 128;
  const Layout l = Layout::batched(1, N, H, H, D);
  const attn::Options opt;
  const double scale = opt.scale_for(l);
  const size_t qn = l.q_elems(), kvn = l.kv_elems(), rows = l.lse_elems();
  const double need = 2.0 * (qn * 5 + kvn * 3) + 4.0 * qn + 4.0 * rows * 4 + 2.0 * kGiB;
  if (static_cast<double>(free_device_bytes()) < need)
    GTEST_SKIP() << "needs about " << need / kGiB << " GiB of device memory, "
                 << free_device_bytes() / kGiB << " GiB free";

  DeviceBuffer<acu::bf16> q(qn), k(kvn), v(kvn), dout(qn), o(qn), dq(qn), dk(kvn), dv(kvn);
  DeviceBuffer<float> lse(rows);
  acu::fill_random_bf16(q.ptr, qn, 301);
  acu::fill_random_bf16(k.ptr, kvn, 302);
  acu::fill_random_bf16(v.ptr, kvn, 303);
  acu::fill_random_bf16(dout.ptr, qn, 304);
  for (auto* b : {&o, &dq, &dk, &dv}) b->poison();
  lse.poison();
  acu::Plan plan(l, MobaConfig{64, 1}, opt);
  acu::dense_forward(plan, q.ptr, k.ptr, v.ptr, o.ptr, lse.ptr);
  acu::dense_backward(plan, q.ptr, k.ptr, v.ptr, o.ptr, lse.ptr, dout.ptr, dq.ptr, dk.ptr, dv.ptr);
  const cudaError_t err = cudaDeviceSynchronize();
  ASSERT_EQ(err, cudaSuccess) << cudaGetErrorString(err);

  HostKV kv{k.download<uint16_t>(0, kvn), v.download<uint16_t>(0, kvn), H, D};
  struct Sample {
    int64_t tok, h;
    std::vector<float> q, dout;
    RowResult r;
  };
  std::vector<Sample> samples;
  const int64_t kvh_t = 11, k0 = N - 64;
  // ~32 spread tokens, head i % H; at the target's tokens another head than kvh_t (those
  // rows are all sampled below, and each must count once in dK/dV).
  const std::vector<int64_t> spread = sample_tokens(N, 64, 21);
  for (size_t i = 0; i < spread.size(); ++i) {
    int64_t h = static_cast<int64_t>(i) % H;
    if (spread[i] >= k0 && h == kvh_t) h = (h + 1) % H;
    samples.push_back({spread[i], h, {}, {}, {}});
  }
  for (int64_t t = k0; t < N; ++t) samples.push_back({t, kvh_t, {}, {}, {}});
  for (Sample& s : samples) {
    const size_t row = static_cast<size_t>(s.tok * H + s.h);
    s.q = to_float(q.download<uint16_t>(row * D, D).data(), D);
    s.dout = to_float(dout.download<uint16_t>(row * D, D).data(), D);
  }
  KeyGrads g;
  g.init(k0, N, kvh_t, D);
#pragma omp parallel
  {
    KeyGrads local;
    local.init(k0, N, kvh_t, D);
#pragma omp for schedule(dynamic, 1)
    for (size_t i = 0; i < samples.size(); ++i) {
      Sample& s = samples[i];
      const auto keys = key_ranges(nullptr, 0, 0, s.tok);
      s.r = row_reference(kv, s.h, keys, s.q.data(), s.dout.data(), scale);
      if (s.h == kvh_t && s.tok >= k0) add_key_grads(kv, keys, s.q.data(), s.dout.data(), scale, s.r, local);
    }
#pragma omp critical
    g.add(local);
  }
  g.finish(scale);
  ErrAcc e_out, e_lse, e_dq, e_dk, e_dv;
  RowRelAcc r_out, r_dq;
  for (const Sample& s : samples) {
    const size_t row = static_cast<size_t>(s.tok * H + s.h);
    const Bits go = o.download<uint16_t>(row * D, D), gq = dq.download<uint16_t>(row * D, D);
    e_lse.add(lse.download<float>(row, 1)[0], s.r.n_lse, s.r.lse);
    for (int64_t d = 0; d < D; ++d) {
      e_out.add(bf16_value(go[d]), s.r.n_out[d], s.r.out[d]);
      e_dq.add(bf16_value(gq[d]), s.r.n_dq[d], s.r.dq[d]);
    }
    r_out.add_row(go, s.r.n_out, s.r.out);
    r_dq.add_row(gq, s.r.n_dq, s.r.dq);
  }
  const Bits gk = dk.download<uint16_t>(k0 * H * D, 64 * H * D), gv = dv.download<uint16_t>(k0 * H * D, 64 * H * D);
  for (int64_t j = 0; j < 64; ++j)
    for (int64_t d = 0; d < D; ++d) {
      const size_t at = static_cast<size_t>((j * H + kvh_t) * D + d), r = static_cast<size_t>(j * D + d);
      e_dk.add(bf16_value(gk[at]), g.n_dk[r], g.dk[r]);
      e_dv.add(bf16_value(gv[at]), g.n_dv[r], g.dv[r]);
    }
  expect_bound("out", e_out);
  expect_bound("lse", e_lse);
  expect_bound("dq", e_dq);
  expect_bound("dk", e_dk);
  expect_bound("dv", e_dv);
  expect_row_bound("out", r_out);
  expect_row_bound("dq", r_dq);
}

}  // namespace
}  // namespace moba::test
