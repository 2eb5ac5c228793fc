// Context parallel's MoBA block fetch on the GPU (src/dist/context_parallel_cuda.h) with R
// ranks on one GPU: the fake group's threads, each through a HostStagedCommunicator (device
// buffers staged through the host), against the single-GPU kernels on the whole sequence
// and the CPU float64 reference.
//
// Per case, one sequence of R x T_r tokens (bf16-valued normal q, k, v, dout):
//  - whole: moba_gate, moba_forward, moba_backward on one plan (the single-GPU path);
//  - each rank: its shard's forward and backward through the block fetch;
//  - checks: every rank's selection equals the whole sequence's rows bit for bit; out and
//    lse against the whole path's rows (the same kernels on the same keys in the same order:
//    expected equal up to the fp32 merge's order, bound 1e-2 of out's largest, 1e-4 on lse);
//    dq, dk, dv against the float64 reference (attn::cpu::moba_backward on the whole
//    sequence with the whole selection) no further than 2x the whole path's own error plus
//    2^-8 of the tensor's largest (dk, dv add bf16 partial sums once more); the fetched
//    blocks are those some query of the shard selected from earlier ranks; the traffic adds
//    up over the ranks (sent = received).
// What the bounds catch (reasoned, not run as mutants): dropping the returned gradients
// leaves dk, dv short by the later ranks' share, of the order of the gradient itself (the
// bound is ~1e-2 of it); a remap off by one block changes out far past its 1e-2 bound.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "attention/attention_cpu.h"
#include "attention/cuda/attention_cuda.h"
#include "attention/gate.h"
#include "attention_gpu/bf16_vectors.h"
#include "attention_gpu/device_buffer.h"
#include "core/cuda_check.cuh"
#include "core/error.h"
#include "core/random.h"
#include "dist/context_parallel_cuda.h"
#include "dist/fake_communicator.h"
#include "dist/host_staged_communicator.h"
#ifdef MOBA_WITH_NCCL
#include "dist/nccl_communicator.h"
#endif

namespace moba::test {
namespace {

using attn::Layout;
using attn::MobaConfig;
namespace acu = attn::cuda;
namespace dcu = dist::cuda;

double max_abs(const std::vector<double>& x) {
  double m = 0;
  for (double e : x) m = std::max(m, std::abs(e));
  return m;
}
// max |a[first + i] - b[i]|
template <typename A, typename B>
double max_diff(const std::vector<A>& a, size_t first, const std::vector<B>& b) {
  double m = 0;
  for (size_t i = 0; i < b.size(); ++i)
    m = std::max(m, std::abs(static_cast<double>(a[first + i]) - static_cast<double>(b[i])));
  return m;
}

struct Case {
  int R;
  int64_t Tr, Hq, Hkv, D, S, K;
  std::string name() const {
    return "R " + std::to_string(R) + ", T_r " + std::to_string(Tr) + ", Hq " +
           std::to_string(Hq) + ", Hkv " + std::to_string(Hkv) + ", D " + std::to_string(D) +
           ", S " + std::to_string(S) + ", K " + std::to_string(K);
  }
};

struct RankResult {
  std::vector<int32_t> sel;
  std::vector<float> out, lse, dq, dk, dv;
  std::vector<int32_t> fetched;
  dist::ContextParallelTraffic fwd, bwd;
};

// Runs fn on every rank of a group of R, each with a communicator over device memory.
using RankFn = std::function<void(dist::Communicator&)>;
using Runner = std::function<void(int R, const RankFn&)>;

// The fake group's ranks (threads) on this one GPU, through the host.
void run_host_staged(int R, const RankFn& fn) {
  dist::FakeGroup group(R, std::chrono::milliseconds(120000));
  group.run([&](dist::Communicator& host) {
    dist::HostStagedCommunicator comm(host);
    fn(comm);
  });
}

#ifdef MOBA_WITH_NCCL
// NCCL's ranks (threads), rank r on GPU r; NVLink multicast off.
void run_nccl(int R, const RankFn& fn) {
  setenv("NCCL_NVLS_ENABLE", "0", 1);
  const dist::NcclId id = dist::nccl_unique_id();
  std::vector<std::thread> threads;
  std::vector<std::string> errors(static_cast<size_t>(R));
  for (int r = 0; r < R; ++r)
    threads.emplace_back([&, r] {
      try {
        CUDA_CHECK(cudaSetDevice(r));
        dist::NcclCommunicator comm(id, r, R, r, std::chrono::milliseconds(120000));
        fn(comm);
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(r)] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < R; ++r)
    if (!errors[static_cast<size_t>(r)].empty())
      throw moba::Error("rank " + std::to_string(r) + " failed: " + errors[static_cast<size_t>(r)]);
}
#endif

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

// One case through `runner`, checked as the file's header says.
void check_case(const Case& cs, const Runner& runner) {
  const int64_t T = cs.R * cs.Tr;
  const Layout whole = Layout::batched(1, T, cs.Hq, cs.Hkv, cs.D);
  const Layout shard = Layout::batched(1, cs.Tr, cs.Hq, cs.Hkv, cs.D);
  const MobaConfig cfg{cs.S, cs.K};
  const attn::Options opt{};
  const uint64_t seed = 7000 + static_cast<uint64_t>(cs.R * 131 + cs.Tr + cs.K);
  const std::vector<float> q = bf16_normal(whole.q_elems(), seed),
                           k = bf16_normal(whole.kv_elems(), seed + 1),
                           v = bf16_normal(whole.kv_elems(), seed + 2),
                           dout = bf16_normal(whole.q_elems(), seed + 3);
  const std::vector<acu::bf16> qb = to_bf16(q), kb = to_bf16(k), vb = to_bf16(v),
                               dob = to_bf16(dout);

  // The single-GPU path on the whole sequence (GPU 0).
  std::vector<int32_t> sel_w;
  std::vector<float> out_w, lse_w, dq_w, dk_w, dv_w;
  {
    CUDA_CHECK(cudaSetDevice(0));
    DeviceBuffer<acu::bf16> dq_in(qb), dk_in(kb), dv_in(vb), ddo(dob);
    DeviceBuffer<int32_t> wsel(whole.lse_elems() * static_cast<size_t>(cs.K));
    DeviceBuffer<acu::bf16> wout(whole.q_elems()), wdq(whole.q_elems()), wdk(whole.kv_elems()),
        wdv(whole.kv_elems());
    DeviceBuffer<float> wlse(whole.lse_elems());
    acu::Plan plan(whole, cfg, opt);
    acu::moba_gate(plan, dq_in.ptr, dk_in.ptr, wsel.ptr);
    acu::moba_forward(plan, wsel.ptr, dq_in.ptr, dk_in.ptr, dv_in.ptr, wout.ptr, wlse.ptr);
    acu::moba_backward(plan, wsel.ptr, dq_in.ptr, dk_in.ptr, dv_in.ptr, wout.ptr, wlse.ptr,
                       ddo.ptr, wdq.ptr, wdk.ptr, wdv.ptr);
    sel_w = wsel.download();
    out_w = from_bf16(wout.download());
    lse_w = wlse.download();
    dq_w = from_bf16(wdq.download());
    dk_w = from_bf16(wdk.download());
    dv_w = from_bf16(wdv.download());
  }

  // The ranks, each with its shard uploaded to its own device.
  std::vector<RankResult> res(static_cast<size_t>(cs.R));
  runner(cs.R, [&](dist::Communicator& comm) {
    const int r = comm.rank();
    const size_t qs = shard.q_elems(), ks = shard.kv_elems();
    auto part = [](const std::vector<acu::bf16>& x, size_t n, int r) {
      return std::vector<acu::bf16>(x.begin() + static_cast<ptrdiff_t>(r * n),
                                    x.begin() + static_cast<ptrdiff_t>((r + 1) * n));
    };
    DeviceBuffer<acu::bf16> sq(part(qb, qs, r)), sk(part(kb, ks, r)), sv(part(vb, ks, r)),
        sdo(part(dob, qs, r));
    cudaStream_t stream;
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    DeviceBuffer<acu::bf16> out(qs), dq(qs), dk(ks), dv(ks);
    DeviceBuffer<float> lse(shard.lse_elems());
    for (auto* b : {&out, &dq, &dk, &dv}) b->poison();
    lse.poison();
    dcu::MobaContextParallelState state;
    RankResult& rr = res[static_cast<size_t>(r)];
    rr.fwd = dcu::moba_forward_context_parallel_cuda(comm, shard, cfg, opt, sq.ptr, sk.ptr,
                                                     sv.ptr, out.ptr, lse.ptr, state, stream);
    rr.bwd = dcu::moba_backward_context_parallel_cuda(comm, state, sdo.ptr, dq.ptr, dk.ptr,
                                                      dv.ptr, stream);
    CUDA_CHECK(cudaStreamSynchronize(stream));
    CUDA_CHECK(cudaStreamDestroy(stream));
    rr.sel.resize(shard.lse_elems() * static_cast<size_t>(cs.K));
    CUDA_CHECK(cudaMemcpy(rr.sel.data(), state.selection(), rr.sel.size() * sizeof(int32_t),
                          cudaMemcpyDeviceToHost));
    rr.out = from_bf16(out.download());
    rr.lse = lse.download();
    rr.dq = from_bf16(dq.download());
    rr.dk = from_bf16(dk.download());
    rr.dv = from_bf16(dv.download());
    rr.fetched = state.fetched_blocks();
  });

  // The float64 reference on the whole sequence with the whole selection.
  const std::vector<double> q64(q.begin(), q.end()), k64(k.begin(), k.end()),
      v64(v.begin(), v.end()), do64(dout.begin(), dout.end());
  std::vector<double> out64(whole.q_elems()), lse64(whole.lse_elems()), dq64(whole.q_elems()),
      dk64(whole.kv_elems()), dv64(whole.kv_elems());
  const attn::Selection selection{cs.K, cs.Hq, sel_w};
  attn::cpu::moba_forward<double>(whole, cfg, selection, opt, q64, k64, v64, out64, lse64);
  attn::cpu::moba_backward<double>(whole, cfg, selection, opt, q64, k64, v64, out64, lse64, do64,
                                   dq64, dk64, dv64);

  const double out_max = max_abs(out64);
  double out_d = 0, lse_d = 0;
  std::vector<float> dq_cp, dk_cp, dv_cp;
  size_t sent = 0, received = 0;
  for (int r = 0; r < cs.R; ++r) {
    const RankResult& rr = res[static_cast<size_t>(r)];
    const size_t ss = rr.sel.size();
    EXPECT_TRUE(std::equal(rr.sel.begin(), rr.sel.end(), sel_w.begin() + static_cast<ptrdiff_t>(r * ss)))
        << "rank " << r << " selects other blocks than the whole sequence's gate";
    out_d = std::max(out_d, max_diff(out_w, static_cast<size_t>(r) * shard.q_elems(), rr.out));
    lse_d = std::max(lse_d, max_diff(lse_w, static_cast<size_t>(r) * shard.lse_elems(), rr.lse));
    dq_cp.insert(dq_cp.end(), rr.dq.begin(), rr.dq.end());
    dk_cp.insert(dk_cp.end(), rr.dk.begin(), rr.dk.end());
    dv_cp.insert(dv_cp.end(), rr.dv.begin(), rr.dv.end());
    // The blocks fetched: exactly the earlier ranks' blocks the shard's queries selected.
    std::vector<int32_t> want;
    const int64_t b0 = r * (cs.Tr / cs.S);
    for (size_t i = 0; i < ss; ++i) {
      const int32_t j = rr.sel[i];
      if (j >= 0 && j < b0) want.push_back(j);
    }
    std::sort(want.begin(), want.end());
    want.erase(std::unique(want.begin(), want.end()), want.end());
    EXPECT_EQ(rr.fetched, want) << "rank " << r << " fetched other blocks than its queries selected";
    sent += rr.fwd.kv_sent;
    received += rr.fwd.kv_received;
    EXPECT_EQ(rr.bwd.kv_sent, rr.fwd.kv_received) << "rank " << r;
    EXPECT_EQ(rr.bwd.kv_received, rr.fwd.kv_sent) << "rank " << r;
  }
  EXPECT_EQ(sent, received);
  EXPECT_LE(out_d, 1e-2 * out_max) << "out differs from the whole sequence's rows";
  EXPECT_LE(lse_d, 1e-4) << "lse differs from the whole sequence's rows";

  auto err = [](const std::vector<float>& got, const std::vector<double>& ref) {
    return max_diff(got, 0, ref);
  };
  const struct {
    const char* name;
    const std::vector<float>& cp;
    const std::vector<float>& w;
    const std::vector<double>& ref;
  } grads[] = {{"dq", dq_cp, dq_w, dq64}, {"dk", dk_cp, dk_w, dk64}, {"dv", dv_cp, dv_w, dv64}};
  std::printf("    %s: out vs whole %.2e (of %.2e), lse %.2e", cs.name().c_str(), out_d, out_max,
              lse_d);
  for (const auto& g : grads) {
    const double e_cp = err(g.cp, g.ref), e_w = err(g.w, g.ref), m = max_abs(g.ref);
    std::printf(", %s err %.2e (whole %.2e, max %.2e)", g.name, e_cp, e_w, m);
    EXPECT_LE(e_cp, 2 * e_w + m / 256) << g.name << " of the ranks against the reference";
  }
  std::size_t fetched = 0;
  for (const RankResult& rr : res) fetched += rr.fetched.size();
  std::printf(", blocks fetched %zu, K/V bytes %zu\n", fetched, sent);
}

class ContextParallelGpu : public ::testing::TestWithParam<Case> {};

// R ranks on this one GPU, through the host.
TEST_P(ContextParallelGpu, RanksEqualTheWholeSequence) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device: GPU context-parallel test skipped";
  check_case(GetParam(), run_host_staged);
}

// The same through NCCL: one rank on one GPU always, R ranks where R GPUs are here.
TEST_P(ContextParallelGpu, OverNccl) {
#ifdef MOBA_WITH_NCCL
  if (!have_device()) GTEST_SKIP() << "no CUDA device: GPU context-parallel test skipped";
  Case cs = GetParam();
  if (cs.R > device_count()) {
    if (cs.R != 2) GTEST_SKIP() << "needs " << cs.R << " GPUs";
    cs.R = 1;  // on one GPU: the same shapes as one rank over NCCL
    cs.Tr *= 2;
  }
  check_case(cs, run_nccl);
#else
  GTEST_SKIP() << "built without NCCL";
#endif
}

const Case kCases[] = {
    {2, 1024, 4, 2, 128, 128, 3}, {4, 512, 2, 1, 64, 64, 4},    {3, 2048, 4, 4, 64, 256, 2},
    {2, 512, 2, 1, 128, 128, 1},  {4, 4096, 8, 2, 128, 512, 3}, {2, 2048, 4, 2, 64, 128, 8},
    {1, 2048, 4, 2, 128, 128, 3},
};
INSTANTIATE_TEST_SUITE_P(Shapes, ContextParallelGpu, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<Case>& i) {
                           const Case& c = i.param;
                           return "R" + std::to_string(c.R) + "_Tr" + std::to_string(c.Tr) +
                                  "_D" + std::to_string(c.D) + "_S" + std::to_string(c.S) +
                                  "_K" + std::to_string(c.K);
                         });

// The errors: shards of different lengths and a shard of a partial block, on every rank
// with the same message; a backward without its forward's state.
TEST(ContextParallelGpuErrors, NamedOnEveryRank) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device: GPU context-parallel test skipped";
  const MobaConfig cfg{128, 3};
  auto run = [&](const std::vector<int64_t>& lengths, const std::string& needle) {
    const int R = static_cast<int>(lengths.size());
    std::vector<std::string> msg(lengths.size());
    dist::FakeGroup group(R, std::chrono::milliseconds(20000));
    try {
      group.run([&](dist::Communicator& host) {
        dist::HostStagedCommunicator comm(host);
        const int r = comm.rank();
        const int64_t Tr = lengths[static_cast<size_t>(r)];
        const Layout shard = Layout::batched(1, Tr, 2, 1, 64);
        DeviceBuffer<acu::bf16> q(shard.q_elems()), k(shard.kv_elems()), v(shard.kv_elems()),
            out(shard.q_elems());
        DeviceBuffer<float> lse(shard.lse_elems());
        dcu::MobaContextParallelState state;
        try {
          dcu::moba_forward_context_parallel_cuda(comm, shard, cfg, attn::Options{}, q.ptr, k.ptr,
                                                  v.ptr, out.ptr, lse.ptr, state);
        } catch (const moba::Error& e) {
          msg[static_cast<size_t>(r)] = e.what();
          throw;
        }
      });
      ADD_FAILURE() << "accepted; expected an error naming: " << needle;
    } catch (const moba::Error&) {
    }
    for (int r = 0; r < R; ++r)
      EXPECT_NE(msg[static_cast<size_t>(r)].find(needle), std::string::npos)
          << "rank " << r << ": " << msg[static_cast<size_t>(r)];
  };
  run({256, 512}, "the shards differ in length");
  run({200, 200}, "is not a whole number of MoBA blocks of S = 128");

  dist::FakeGroup one(1);
  one.run([&](dist::Communicator& host) {
    dist::HostStagedCommunicator comm(host);
    dcu::MobaContextParallelState state;
    DeviceBuffer<acu::bf16> b(16);
    try {
      dcu::moba_backward_context_parallel_cuda(comm, state, b.ptr, b.ptr, b.ptr, b.ptr);
      ADD_FAILURE() << "a backward without a forward was accepted";
    } catch (const moba::Error& e) {
      EXPECT_NE(std::string(e.what()).find("the state is empty"), std::string::npos) << e.what();
    }
  });
}

}  // namespace
}  // namespace moba::test
