// moba bench attention --device cuda: times the CUDA kernels (bf16) with CUDA events,
// median of `repeats` after 3 warm-ups, on device-generated random inputs.
#include "cli/bench_cuda.h"

#include <algorithm>
#include <functional>
#include <vector>

#include "attention/cuda/attention_cuda.h"
#include "attention/fwd_chunks.h"
#include "attention/stats.h"
#include "core/cuda_check.cuh"

namespace moba::cli {
namespace {

namespace acu = attn::cuda;

template <typename T>
struct Dev {
  T* p = nullptr;
  size_t bytes = 0;
  explicit Dev(size_t n) : bytes(sizeof(T) * std::max<size_t>(1, n)) { CUDA_CHECK(cudaMalloc(&p, bytes)); }
  ~Dev() { cudaFree(p); }
  Dev(const Dev&) = delete;
};

// Warm-up calls before the timed ones.
constexpr int kWarmup = 3;

}  // namespace

double cuda_median_ms(int warmup, int repeats, const std::function<void()>& fn) {
  for (int i = 0; i < warmup; ++i) fn();
  cudaEvent_t a, b;
  CUDA_CHECK(cudaEventCreate(&a));
  CUDA_CHECK(cudaEventCreate(&b));
  std::vector<double> ms;
  for (int r = 0; r < repeats; ++r) {
    CUDA_CHECK(cudaEventRecord(a));
    fn();
    CUDA_CHECK(cudaEventRecord(b));
    CUDA_CHECK(cudaEventSynchronize(b));
    float t = 0.f;
    CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  CUDA_CHECK(cudaEventDestroy(a));
  CUDA_CHECK(cudaEventDestroy(b));
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

nlohmann::json bench_cuda_one(const CudaBenchShape& o, int64_t T) {
  using namespace moba::attn;
  const Layout layout = Layout::batched(o.batch, T, o.heads, o.kv_heads, o.head_dim);
  const MobaConfig cfg{o.block_size, o.top_k};
  const Options opt;
  const size_t nq = layout.q_elems(), nkv = layout.kv_elems(), nl = layout.lse_elems();
  const size_t gq = o.fwd_only ? 0 : nq, gkv = o.fwd_only ? 0 : nkv;  // gradient buffers
  Dev<acu::bf16> q(nq), k(nkv), v(nkv), out(nq), dout(gq), dq(gq), dk(gkv), dv(gkv);
  Dev<float> lse(nl);
  Dev<int32_t> sel(nl * cfg.top_k);
  acu::fill_random_bf16(q.p, nq, o.seed);
  acu::fill_random_bf16(k.p, nkv, o.seed + 1);
  acu::fill_random_bf16(v.p, nkv, o.seed + 2);
  if (!o.fwd_only) acu::fill_random_bf16(dout.p, nq, o.seed + 3);
  const double tensors =
      double(q.bytes + k.bytes + v.bytes + out.bytes + lse.bytes) +
      (o.fwd_only ? 0.0 : double(dout.bytes + dq.bytes + dk.bytes + dv.bytes));

  double dense_fwd = 0, dense_fb = 0, dense_ws = 0;
  if (!o.skip_dense) {
    acu::Plan dense(layout, cfg, opt);
    dense_fwd = cuda_median_ms(kWarmup, o.repeats,
                               [&] { acu::dense_forward(dense, q.p, k.p, v.p, out.p, lse.p); });
    if (!o.fwd_only)
      dense_fb = cuda_median_ms(kWarmup, o.repeats, [&] {
        acu::dense_forward(dense, q.p, k.p, v.p, out.p, lse.p);
        acu::dense_backward(dense, q.p, k.p, v.p, out.p, lse.p, dout.p, dq.p, dk.p, dv.p);
      });
    dense_ws = double(dense.peak_workspace_bytes());
  }
  Options moba_opt = opt;
  moba_opt.fwd_chunk_tokens = o.fwd_chunk;
  acu::Plan plan(layout, cfg, moba_opt);
  const int64_t chunk = fwd_chunk_tokens(moba_opt);
  const double gate =
      cuda_median_ms(kWarmup, o.repeats, [&] { acu::moba_gate(plan, q.p, k.p, sel.p); });
  const double attn_fwd = cuda_median_ms(kWarmup, o.repeats, [&] {
    acu::moba_forward(plan, sel.p, q.p, k.p, v.p, out.p, lse.p);
  });
  const double moba_fwd = cuda_median_ms(kWarmup, o.repeats, [&] {
    acu::moba_gate(plan, q.p, k.p, sel.p);
    acu::moba_forward(plan, sel.p, q.p, k.p, v.p, out.p, lse.p);
  });
  const double moba_fb = o.fwd_only ? 0.0 : cuda_median_ms(kWarmup, o.repeats, [&] {
    acu::moba_gate(plan, q.p, k.p, sel.p);
    acu::moba_forward(plan, sel.p, q.p, k.p, v.p, out.p, lse.p);
    acu::moba_backward(plan, sel.p, q.p, k.p, v.p, out.p, lse.p, dout.p, dq.p, dk.p, dv.p);
  });
  // One more MoBA fwd+bwd (forward only with fwd_only) with a per-phase breakdown.
  nlohmann::json phases = nlohmann::json::object();
  acu::enable_phase_timing(true);
  acu::moba_gate(plan, q.p, k.p, sel.p);
  acu::moba_forward(plan, sel.p, q.p, k.p, v.p, out.p, lse.p);
  if (!o.fwd_only)
    acu::moba_backward(plan, sel.p, q.p, k.p, v.p, out.p, lse.p, dout.p, dq.p, dk.p, dv.p);
  for (const auto& [name, ms] : acu::take_phase_times()) phases[std::string("moba.") + name] = phases.value(std::string("moba.") + name, 0.0) + ms;
  acu::enable_phase_timing(false);
  size_t free_b = 0, total_b = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));

  Selection s{cfg.top_k, layout.num_q_heads, std::vector<int32_t>(nl * cfg.top_k)};
  CUDA_CHECK(cudaMemcpy(s.blocks.data(), sel.p, sizeof(int32_t) * s.blocks.size(),
                        cudaMemcpyDeviceToHost));
  const double dp = dense_pairs(layout), mp = moba_pairs(layout, cfg, s);
  const int64_t D = o.head_dim;
  const double dense_fb_flops = attention_fwd_bwd_flops(dp, D);
  nlohmann::json r = {
      {"T", T},
      {"gate_ms", gate},
      {"moba_attn_fwd_ms", attn_fwd},
      {"moba_fwd_ms", moba_fwd},
      {"density", mp / dp},
      {"moba_dense_equiv_tflops_fwd", attention_fwd_flops(dp, D) / moba_fwd * 1e-9},
      {"moba_attended_tflops_fwd", attention_fwd_flops(mp, D) / moba_fwd * 1e-9},
      {"gate_share_of_fwd", gate / moba_fwd},
      {"moba_peak_mib", (tensors + sel.bytes + double(plan.peak_workspace_bytes())) / 1048576.0},
      {"moba_workspace_mib", double(plan.peak_workspace_bytes()) / 1048576.0},
      {"fwd_chunk_tokens", chunk},
      {"fwd_chunks", fwd_chunks(layout, cfg, chunk).size()},
      {"device_used_mib", double(total_b - free_b) / 1048576.0},
      {"phases_ms", phases},
  };
  if (o.fwd_only) {
    r["fwd_only"] = true;
  } else {
    r["moba_fwd_bwd_ms"] = moba_fb;
    r["moba_dense_equiv_tflops_fwd_bwd"] = dense_fb_flops / moba_fb * 1e-9;
    r["moba_attended_tflops_fwd_bwd"] = attention_fwd_bwd_flops(mp, D) / moba_fb * 1e-9;
  }
  if (!o.skip_dense) {
    r["dense_fwd_ms"] = dense_fwd;
    r["dense_tflops_fwd"] = attention_fwd_flops(dp, D) / dense_fwd * 1e-9;
    r["dense_peak_mib"] = (tensors + dense_ws) / 1048576.0;
    r["speedup_fwd"] = dense_fwd / moba_fwd;
    if (!o.fwd_only) {
      r["dense_fwd_bwd_ms"] = dense_fb;
      r["dense_tflops_fwd_bwd"] = dense_fb_flops / dense_fb * 1e-9;
      r["speedup_fwd_bwd"] = dense_fb / moba_fb;
    }
  }
  return r;
}

std::string cuda_device_name() {
  cudaDeviceProp p{};
  CUDA_CHECK(cudaGetDeviceProperties(&p, 0));
  return p.name;
}

}  // namespace moba::cli
