// moba bench attention: times dense and MoBA attention (forward, forward + backward, gate)
// on fresh random inputs and prints a Markdown table on stdout (progress per T on stderr),
// optionally JSON (-o).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "attention/attention_cpu.h"
#include "attention/fwd_chunks.h"
#ifdef MOBA_HAVE_CUDA_ATTENTION
#include "cli/bench_cuda.h"
#endif
#include "attention/stats.h"
#include "cli/commands.h"
#include "cli/json_file.h"
#include "core/error.h"
#include "core/random.h"
#include "core/timing.h"

namespace moba::cli {
namespace {

struct BenchAttentionOptions {
  std::string device = "cpu";
  std::vector<int64_t> seq_lens = {1024, 2048, 4096};
  int64_t batch = 1;
  int64_t heads = 4;     // Hq
  int64_t kv_heads = 0;  // Hkv; 0 means Hq
  int64_t head_dim = 64;
  int64_t block_size = 256;
  int64_t top_k = 3;
  std::string dtype = "float";  // cpu: float or double; cuda: bf16 (the default there)
  int repeats = 3;
  uint64_t seed = 1;
  std::string json_path;
  std::string peer_path;  // JSON from bench/peer_sdpa.py, timed in the same device call
  bool skip_dense = false;
  bool fwd_only = false;   // cuda: forwards only (prefill), no gradient buffers
  int64_t fwd_chunk = -1;  // MoBA forward's query chunk; -1: MOBA_FWD_CHUNK_TOKENS
};

// One table row per sequence length: measure(T) between progress lines on stderr (the table
// on stdout is the result, and a long T is not silence), then print(T, row), which may add to
// the row, flushed at once. Returns the rows, for -o.
template <typename Measure, typename Print>
nlohmann::json bench_rows(const std::vector<int64_t>& seq_lens, Measure measure, Print print) {
  nlohmann::json rows = nlohmann::json::array();
  for (size_t i = 0; i < seq_lens.size(); ++i) {
    const int64_t T = seq_lens[i];
    const auto t0 = Clock::now();
    std::fprintf(stderr, "bench attention: T %lld (%zu of %zu)...\n", static_cast<long long>(T),
                 i + 1, seq_lens.size());
    std::fflush(stderr);
    nlohmann::json r = measure(T);
    std::fprintf(stderr, "bench attention: T %lld done in %.1f s\n", static_cast<long long>(T),
                 seconds_since(t0));
    print(T, r);
    std::fflush(stdout);
    rows.push_back(r);
  }
  return rows;
}

double median_ms(int repeats, const std::function<void()>& fn) {
  std::vector<double> ms;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                     .count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

template <typename Real>
nlohmann::json bench_cpu_one(const BenchAttentionOptions& o, int64_t T) {
  using namespace moba::attn;
  const Layout layout = Layout::batched(o.batch, T, o.heads, o.kv_heads ? o.kv_heads : o.heads,
                                        o.head_dim);
  const MobaConfig cfg{o.block_size, o.top_k};
  cfg.validate();
  const Options opt;
  const auto q = random_normal<Real>(layout.q_elems(), o.seed);
  const auto k = random_normal<Real>(layout.kv_elems(), o.seed + 1);
  const auto v = random_normal<Real>(layout.kv_elems(), o.seed + 2);
  const auto dout = random_normal<Real>(layout.q_elems(), o.seed + 3);
  std::vector<Real> out(layout.q_elems()), lse(layout.lse_elems());
  std::vector<Real> dq(layout.q_elems()), dk(layout.kv_elems()), dv(layout.kv_elems());
  std::span<const Real> cq(q), ck(k), cv(v), cdo(dout), co(out), cl(lse);

  Selection sel;
  const double gate_ms = median_ms(o.repeats, [&] { sel = moba_gate<Real>(layout, cfg, cq, ck); });
  const double dense_fwd = median_ms(o.repeats, [&] {
    cpu::dense_forward<Real>(layout, opt, cq, ck, cv, out, lse);
  });
  const double dense_bwd = median_ms(o.repeats, [&] {
    cpu::dense_backward<Real>(layout, opt, cq, ck, cv, co, cl, cdo, dq, dk, dv);
  });
  const double moba_fwd = median_ms(o.repeats, [&] {
    cpu::moba_forward<Real>(layout, cfg, sel, opt, cq, ck, cv, out, lse);
  });
  const double moba_bwd = median_ms(o.repeats, [&] {
    cpu::moba_backward<Real>(layout, cfg, sel, opt, cq, ck, cv, co, cl, cdo, dq, dk, dv);
  });
  const double dp = dense_pairs(layout) * 1.0, mp = moba_pairs(layout, cfg, sel);
  const int64_t D = o.head_dim;
  return {{"T", T},
          {"dense_fwd_ms", dense_fwd},
          {"dense_fwd_bwd_ms", dense_fwd + dense_bwd},
          {"moba_fwd_ms", gate_ms + moba_fwd},
          {"moba_fwd_bwd_ms", gate_ms + moba_fwd + moba_bwd},
          {"gate_ms", gate_ms},
          {"density", mp / dp},
          {"dense_fwd_gflops", attention_fwd_flops(dp, D) / dense_fwd * 1e-6},
          {"moba_attended_fwd_gflops", attention_fwd_flops(mp, D) / moba_fwd * 1e-6},
          {"speedup_fwd_bwd", (dense_fwd + dense_bwd) / (gate_ms + moba_fwd + moba_bwd)}};
}

#ifdef MOBA_HAVE_CUDA_ATTENTION
// Peer row (bench/peer_sdpa.py) for sequence length T, or null.
nlohmann::json peer_row(const nlohmann::json& peer, int64_t T) {
  if (peer.is_null()) return nullptr;
  for (const auto& r : peer["rows"])
    if (r["T"].get<int64_t>() == T) return r;
  return nullptr;
}

void run_bench_cuda(const BenchAttentionOptions& o) {
  MOBA_CHECK(o.dtype == "bf16" || o.dtype == "float",
             "--device cuda runs bf16 kernels: --dtype must be bf16, got '", o.dtype, "'");
  const nlohmann::json peer = read_peer_json(o.peer_path);
  check_peer_shape(peer, o.peer_path, {{"batch", o.batch}, {"heads", o.heads}, {"head_dim", o.head_dim}});
  const CudaBenchShape shape{o.batch, o.heads, o.kv_heads ? o.kv_heads : o.heads, o.head_dim,
                             o.block_size, o.top_k, o.repeats, o.seed, o.skip_dense,
                             o.fwd_chunk, o.fwd_only};
  std::printf("CUDA attention on %s: B=%lld Hq=%lld Hkv=%lld D=%lld S=%lld K=%lld bf16, causal, "
              "median of %d after 3 warm-ups (CUDA events)\n",
              cuda_device_name().c_str(), static_cast<long long>(o.batch),
              static_cast<long long>(o.heads), static_cast<long long>(shape.kv_heads),
              static_cast<long long>(o.head_dim), static_cast<long long>(o.block_size),
              static_cast<long long>(o.top_k), o.repeats);
  {
    attn::Options co;
    co.fwd_chunk_tokens = o.fwd_chunk;
    const int64_t c = attn::fwd_chunk_tokens(co);
    if (c > 0)
      std::printf("MoBA forward in chunks of %lld query tokens (--fwd-chunk / MOBA_FWD_CHUNK_TOKENS; "
                  "the partials of one chunk at a time).\n", static_cast<long long>(c));
    else
      std::printf("MoBA forward in one pass (no --fwd-chunk, MOBA_FWD_CHUNK_TOKENS unset or 0).\n");
  }
  std::printf("MoBA times include the gate. TFLOP/s: dense-equivalent = dense causal FLOPs / MoBA "
              "time; attended = FLOPs of the selected pairs / MoBA time. Peer ratios = peer ms / "
              "our ms (> 1: we are faster).\n\n");
  auto measure = [&](int64_t T) { return bench_cuda_one(shape, T); };
  auto write_rows = [&](const nlohmann::json& rows) {  // -o: the shape, then the rows
    if (o.json_path.empty()) return;
    write_json_file(o.json_path,
                    {{"device", cuda_device_name()}, {"dtype", "bf16"}, {"batch", o.batch},
                     {"heads", o.heads}, {"kv_heads", shape.kv_heads}, {"head_dim", o.head_dim},
                     {"block_size", o.block_size}, {"top_k", o.top_k}, {"repeats", o.repeats},
                     {"fwd_only", o.fwd_only}, {"rows", rows}});
  };
  auto num = [](const nlohmann::json& j, const char* key) {
    return j.is_object() && j.contains(key) ? j[key].get<double>() : 0.0;
  };
  if (o.fwd_only) {
    // Forwards only (a prefill's attention): no backward, no gradient buffers, so longer T
    // fit (the 10M-token prefill with --kv-heads); MoBA's time includes its gate.
    std::printf("Forwards only (--fwd-only): no backward is run or allocated.\n\n"
                "| T | dense fwd ms | dense TFLOP/s fwd | MoBA fwd ms | gate ms (share) | "
                "density | MoBA TFLOP/s dense-equiv / attended (fwd) | MoBA speed-up over our "
                "dense (fwd) | peak MiB MoBA / dense |\n|---|---|---|---|---|---|---|---|---|\n");
    auto print_fwd = [&](int64_t T, nlohmann::json& r) {
      const bool dense = r.contains("dense_fwd_ms");
      char d_ms[32] = "-", d_tf[32] = "-", sp[32] = "-", d_mib[32] = "-";
      if (dense) {
        std::snprintf(d_ms, sizeof d_ms, "%.3f", num(r, "dense_fwd_ms"));
        std::snprintf(d_tf, sizeof d_tf, "%.0f", num(r, "dense_tflops_fwd"));
        std::snprintf(sp, sizeof sp, "%.2fx", num(r, "speedup_fwd"));
        std::snprintf(d_mib, sizeof d_mib, "%.0f", num(r, "dense_peak_mib"));
      }
      std::printf("| %lld | %s | %s | %.3f | %.3f (%.0f%%) | %.4f | %.0f / %.0f | %s | %.0f / %s |\n",
                  static_cast<long long>(T), d_ms, d_tf, num(r, "moba_fwd_ms"), num(r, "gate_ms"),
                  100.0 * num(r, "gate_share_of_fwd"), num(r, "density"),
                  num(r, "moba_dense_equiv_tflops_fwd"), num(r, "moba_attended_tflops_fwd"), sp,
                  num(r, "moba_peak_mib"), d_mib);
    };
    write_rows(bench_rows(o.seq_lens, measure, print_fwd));
    return;
  }
  std::printf("| T | dense fwd ms | dense fwd+bwd ms | dense TFLOP/s fwd / fwd+bwd | MoBA fwd ms "
              "| MoBA fwd+bwd ms | gate ms (share of fwd) | density | MoBA TFLOP/s dense-equiv / "
              "attended (fwd+bwd) | MoBA speed-up over our dense (fwd+bwd) | cuDNN fwd+bwd ms "
              "| MoBA vs cuDNN | dense vs cuDNN | dense vs FA2 | peak MiB MoBA / dense |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  auto print = [&](int64_t T, nlohmann::json& r) {
    const nlohmann::json pr = peer_row(peer, T);
    const double cudnn = num(pr, "cudnn_fwd_bwd_ms"), fa2 = num(pr, "flash_fwd_bwd_ms");
    const double dfb = num(r, "dense_fwd_bwd_ms"), mfb = num(r, "moba_fwd_bwd_ms");
    if (pr.is_object()) {
      r["peer"] = pr;
      if (cudnn > 0) r["moba_vs_cudnn_fwd_bwd"] = cudnn / mfb;
      if (cudnn > 0 && dfb > 0) r["dense_vs_cudnn_fwd_bwd"] = cudnn / dfb;
      if (fa2 > 0 && dfb > 0) r["dense_vs_fa2_fwd_bwd"] = fa2 / dfb;
    }
    auto ratio = [&](const char* key) {
      char buf[32];
      std::snprintf(buf, sizeof buf, r.contains(key) ? "%.2fx" : "-",
                    r.contains(key) ? r[key].get<double>() : 0.0);
      return std::string(buf);
    };
    std::printf("| %lld | %.3f | %.3f | %.0f / %.0f | %.3f | %.3f | %.3f (%.0f%%) | %.3f | %.0f / %.0f "
                "| %.2fx | %s | %s | %s | %s | %.0f / %.0f |\n",
                static_cast<long long>(T), num(r, "dense_fwd_ms"), dfb, num(r, "dense_tflops_fwd"),
                num(r, "dense_tflops_fwd_bwd"), num(r, "moba_fwd_ms"), mfb, num(r, "gate_ms"),
                100.0 * num(r, "gate_share_of_fwd"), num(r, "density"),
                num(r, "moba_dense_equiv_tflops_fwd_bwd"), num(r, "moba_attended_tflops_fwd_bwd"),
                num(r, "speedup_fwd_bwd"), cudnn > 0 ? std::to_string(cudnn).substr(0, 7).c_str() : "-",
                ratio("moba_vs_cudnn_fwd_bwd").c_str(), ratio("dense_vs_cudnn_fwd_bwd").c_str(),
                ratio("dense_vs_fa2_fwd_bwd").c_str(), num(r, "moba_peak_mib"),
                num(r, "dense_peak_mib"));
  };
  write_rows(bench_rows(o.seq_lens, measure, print));
}
#endif

void run_bench_attention(const BenchAttentionOptions& o) {
#ifdef MOBA_HAVE_CUDA_ATTENTION
  if (o.device == "cuda") {
    MOBA_CHECK(o.repeats >= 1, "--repeats must be >= 1, got ", o.repeats);
    run_bench_cuda(o);
    return;
  }
#endif
  MOBA_CHECK(o.device == "cpu", "device '", o.device,
             "' is not available in this build; use --device cpu"
#ifdef MOBA_HAVE_CUDA_ATTENTION
             " or --device cuda"
#endif
  );
  MOBA_CHECK(!o.fwd_only, "--fwd-only times the CUDA kernels: add --device cuda");
  MOBA_CHECK(o.dtype == "float" || o.dtype == "double", "--dtype must be float or double, got '",
             o.dtype, "'");
  MOBA_CHECK(o.repeats >= 1, "--repeats must be >= 1, got ", o.repeats);
  std::printf("CPU reference attention: B=%lld Hq=%lld Hkv=%lld D=%lld S=%lld K=%lld %s, "
              "median of %d\n\n",
              static_cast<long long>(o.batch), static_cast<long long>(o.heads),
              static_cast<long long>(o.kv_heads ? o.kv_heads : o.heads),
              static_cast<long long>(o.head_dim), static_cast<long long>(o.block_size),
              static_cast<long long>(o.top_k), o.dtype.c_str(), o.repeats);
  std::printf("| T | dense fwd ms | dense fwd+bwd ms | MoBA fwd ms | MoBA fwd+bwd ms | gate ms "
              "| density | MoBA speed-up (fwd+bwd) |\n|---|---|---|---|---|---|---|---|\n");
  auto measure = [&](int64_t T) {
    return o.dtype == "float" ? bench_cpu_one<float>(o, T) : bench_cpu_one<double>(o, T);
  };
  auto print = [](int64_t T, const nlohmann::json& r) {
    std::printf("| %lld | %.2f | %.2f | %.2f | %.2f | %.2f | %.3f | %.2fx |\n",
                static_cast<long long>(T), r["dense_fwd_ms"].get<double>(),
                r["dense_fwd_bwd_ms"].get<double>(), r["moba_fwd_ms"].get<double>(),
                r["moba_fwd_bwd_ms"].get<double>(), r["gate_ms"].get<double>(),
                r["density"].get<double>(), r["speedup_fwd_bwd"].get<double>());
  };
  const nlohmann::json rows = bench_rows(o.seq_lens, measure, print);
  if (!o.json_path.empty())
    write_json_file(o.json_path, {{"device", o.device}, {"dtype", o.dtype}, {"rows", rows}});
}

}  // namespace

void add_bench(CLI::App& app) {
  CLI::App* bench = app.add_subcommand(
      "bench", "Benchmarks that print figures: `moba bench attention`, `moba bench train`");
  static BenchAttentionOptions o;  // defaults live here, CLI11 prints them in --help
  CLI::App* cmd = bench->add_subcommand(
      "attention", "Time dense and MoBA attention (fwd, fwd+bwd, gate) on random inputs");
  cmd->add_option("--seq-len,-T", o.seq_lens, "Sequence lengths T")->capture_default_str();
  add_device_option(cmd, o.device,
                    "cpu (the reference) or cuda (the kernels, bf16); cpu unless given, as in "
                    "every command");
  cmd->add_option("--batch,-B", o.batch, "Batch size B")->capture_default_str();
  add_moba_shape_options(cmd, o.heads, o.head_dim, "Head dim D", o.block_size, o.top_k);
  cmd->add_option("--kv-heads", o.kv_heads, "Key/value heads Hkv (0: same as Hq)")
      ->capture_default_str();
  cmd->add_option("--dtype", o.dtype,
                  "cpu: float or double; cuda runs bf16 (pass bf16, or leave the default)")
      ->capture_default_str();
  add_bench_run_options(cmd, o.repeats, "Timed repeats (median reported)", o.seed,
                        "Random seed of the inputs", o.json_path);
  add_old_spelling(cmd, "--json", o.json_path, "--out");
  cmd->add_option("--peer", o.peer_path,
                  "cuda: JSON of bench/peer_sdpa.py (same shapes, same device call); the table "
                  "shows our ratio to it");
  cmd->add_flag("--skip-dense", o.skip_dense, "cuda: time MoBA only");
  cmd->add_flag("--fwd-only", o.fwd_only,
                "cuda: forwards only (a prefill's attention): no backward and no gradient "
                "buffers, so longer T fit (e.g. -T 10000000 --heads 8 --kv-heads 2 --skip-dense)");
  cmd->add_option("--fwd-chunk", o.fwd_chunk,
                  "cuda: the MoBA forward in chunks of this many query tokens (a multiple of "
                  "max(S, 128); 0 = one pass; unset: MOBA_FWD_CHUNK_TOKENS, else one pass)");
  cmd->callback([] { run_bench_attention(o); });
  add_bench_train(bench);
  add_bench_infer(bench);
}

}  // namespace moba::cli
