// moba bench decode: times one decode step of attention alone (one new query token per
// sequence against a KV cache) with our CUDA kernels, MoBA (gate + selected blocks +
// combine) against dense (split-K flash-decoding + combine), on random bf16 caches filled on
// the device. Median of --repeats CUDA-event timings after --warmup calls. Prints a Markdown
// table on stdout (progress on stderr), optionally JSON (-o). --peer takes
// bench/decode_peers.py's JSON (PyTorch SDPA on the same shapes) and adds the speed-up of
// MoBA over the best dense decode, ours or a peer's. Built only with the CUDA kernels.
#include <algorithm>
#include <cstdio>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "attention/cuda/attention_cuda.h"
#include "attention/cuda/decode_cuda.h"
#include "cli/bench_cuda.h"
#include "cli/commands.h"
#include "cli/json_file.h"
#include "core/cuda_check.cuh"
#include "core/error.h"
#include "core/timing.h"

namespace moba::cli {
namespace {

namespace acu = attn::cuda;

struct BenchDecodeOptions {
  std::vector<int64_t> contexts = {8192, 32768, 131072, 524288};
  std::vector<int64_t> batches = {1, 16};
  std::vector<int64_t> kv_heads = {16, 4};
  int64_t heads = 16;
  int64_t head_dim = 128;
  int64_t block_size = 512;
  int64_t top_k = 3;
  int repeats = 20;
  int warmup = 5;
  uint64_t seed = 1;
  std::string json_path;
  std::string peer_path;
  bool skip_dense = false;
};

// The peer row of the same shape, or null.
nlohmann::json peer_row(const nlohmann::json& peer, int64_t hkv, int64_t B, int64_t T) {
  if (peer.is_null()) return nullptr;
  for (const auto& r : peer["rows"])
    if (r.value("kv_heads", int64_t{0}) == hkv && r.value("batch", int64_t{0}) == B &&
        r.value("context", int64_t{0}) == T)
      return r;
  return nullptr;
}

// One (Hkv, B, T) shape: every sequence holds T tokens, the query is its last.
nlohmann::json bench_one(const BenchDecodeOptions& o, int64_t hkv, int64_t B, int64_t T) {
  const int64_t Hq = o.heads, D = o.head_dim, S = o.block_size, K = o.top_k;
  const attn::MobaConfig cfg{S, K};
  const attn::Options opt;
  const double kv_bytes = 2.0 * B * T * hkv * D * 2;  // K and V, bf16
  size_t free_b = 0, total_b = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  // The cache, its means, the plan's scratch (small) and a margin.
  const double need = kv_bytes * (1.0 + 1.0 / S) + double(B * Hq) * (T / S) * 4 + (1 << 30);
  if (need > double(free_b)) {
    std::fprintf(stderr, "bench decode: Hkv %lld B %lld T %lld skipped: needs %.1f GiB, %.1f GiB free\n",
                 static_cast<long long>(hkv), static_cast<long long>(B), static_cast<long long>(T),
                 need / 1073741824.0, double(free_b) / 1073741824.0);
    return {{"kv_heads", hkv}, {"batch", B}, {"context", T}, {"skipped", "does not fit in memory"}};
  }
  acu::DecodeCache cache(B, T, hkv, D, S);
  const size_t n = static_cast<size_t>(B * T * hkv * D);
  acu::fill_random_bf16(cache.k(), n, o.seed + static_cast<uint64_t>(T));
  acu::fill_random_bf16(cache.v(), n, o.seed + static_cast<uint64_t>(T) + 1);
  cache.adopt(std::vector<int64_t>(static_cast<size_t>(B), T));
  acu::bf16 *q = nullptr, *out = nullptr;
  float* lse = nullptr;
  int32_t* sel = nullptr;
  CUDA_CHECK(cudaMalloc(&q, sizeof(acu::bf16) * B * Hq * D));
  CUDA_CHECK(cudaMalloc(&out, sizeof(acu::bf16) * B * Hq * D));
  CUDA_CHECK(cudaMalloc(&lse, sizeof(float) * B * Hq));
  CUDA_CHECK(cudaMalloc(&sel, sizeof(int32_t) * B * Hq * K));
  acu::fill_random_bf16(q, static_cast<size_t>(B * Hq * D), o.seed + 7);
  nlohmann::json r;
  try {
    acu::DecodePlan plan(B, T, Hq, hkv, D, cfg, opt);
    const double dense = o.skip_dense ? 0.0 : cuda_median_ms(o.warmup, o.repeats, [&] {
      acu::decode_dense(plan, cache, q, out, lse);
    });
    const double moba = cuda_median_ms(o.warmup, o.repeats, [&] {
      acu::decode_moba(plan, cache, q, out, lse, sel);
    });
    // Bytes MoBA reads: the rows of the union of each group's blocks (K and V), the means
    // of the past blocks, q.
    std::vector<int32_t> hs(static_cast<size_t>(B * Hq * K));
    CUDA_CHECK(cudaMemcpy(hs.data(), sel, sizeof(int32_t) * hs.size(), cudaMemcpyDeviceToHost));
    const int64_t G = Hq / hkv;
    double rows = 0, unions = 0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t kvh = 0; kvh < hkv; ++kvh) {
        std::set<int32_t> u;
        for (int64_t g = 0; g < G; ++g)
          for (int64_t i = 0; i < K; ++i) {
            const int32_t j = hs[static_cast<size_t>(((b * Hq + kvh * G + g) * K) + i)];
            if (j >= 0) u.insert(j);
          }
        unions += double(u.size());
        for (int32_t j : u) rows += double(std::min<int64_t>((j + 1) * S, T) - int64_t{j} * S);
      }
    const double moba_bytes =
        rows * D * 2 * 2 + double(B) * ((T - 1) / S) * hkv * D * 4 + double(B * Hq * D) * 2;
    r = {{"kv_heads", hkv},
         {"batch", B},
         {"context", T},
         {"moba_ms", moba},
         {"moba_bytes", moba_bytes},
         {"moba_gbps", moba_bytes / (moba * 1e6)},
         {"moba_union_blocks_per_kv_head", unions / double(B * hkv)},
         {"plan_workspace_mib", double(plan.workspace_bytes()) / 1048576.0},
         {"cache_gib", double(cache.bytes()) / 1073741824.0}};
    if (!o.skip_dense) {
      r["dense_ms"] = dense;
      r["dense_bytes"] = kv_bytes;
      r["dense_gbps"] = kv_bytes / (dense * 1e6);
      r["speedup_vs_our_dense"] = dense / moba;
    }
  } catch (...) {
    cudaFree(q);
    cudaFree(out);
    cudaFree(lse);
    cudaFree(sel);
    throw;
  }
  cudaFree(q);
  cudaFree(out);
  cudaFree(lse);
  cudaFree(sel);
  return r;
}

std::string fmt(const nlohmann::json& r, const char* key, const char* f) {
  if (!r.is_object() || !r.contains(key) || !r[key].is_number()) return "-";
  char buf[48];
  std::snprintf(buf, sizeof buf, f, r[key].get<double>());
  return buf;
}

void run_bench_decode(const BenchDecodeOptions& o) {
  MOBA_CHECK(o.repeats >= 1 && o.warmup >= 0, "--repeats must be >= 1 and --warmup >= 0");
  for (int64_t T : o.contexts) MOBA_CHECK(T >= 1, "--context must be >= 1, got ", T);
  for (int64_t B : o.batches) MOBA_CHECK(B >= 1, "--batch must be >= 1, got ", B);
  const nlohmann::json peer = read_peer_json(o.peer_path);
  std::printf("CUDA decode attention on %s: one query token per sequence, Hq=%lld D=%lld S=%lld "
              "K=%lld bf16 cache, median of %d after %d warm-ups (CUDA events)\n",
              cuda_device_name().c_str(), static_cast<long long>(o.heads),
              static_cast<long long>(o.head_dim), static_cast<long long>(o.block_size),
              static_cast<long long>(o.top_k), o.repeats, o.warmup);
  std::printf("GB/s = bytes read / time: dense reads all of K and V; MoBA the K/V rows of the "
              "blocks its heads selected (union per kv head), the block means and q. Best dense = "
              "the fastest of our dense and the peers (bench/decode_peers.py).\n\n");
  std::printf("| Hkv | B | context | dense ms | dense GB/s | MoBA ms | MoBA GB/s | MoBA speed-up "
              "over our dense | best peer dense ms | MoBA speed-up over best dense |\n"
              "|---|---|---|---|---|---|---|---|---|---|\n");
  nlohmann::json rows = nlohmann::json::array();
  for (int64_t hkv : o.kv_heads)
    for (int64_t B : o.batches)
      for (int64_t T : o.contexts) {
        const auto t0 = Clock::now();
        std::fprintf(stderr, "bench decode: Hkv %lld B %lld context %lld...\n",
                     static_cast<long long>(hkv), static_cast<long long>(B),
                     static_cast<long long>(T));
        nlohmann::json r = bench_one(o, hkv, B, T);
        std::fprintf(stderr, "bench decode: done in %.1f s\n", seconds_since(t0));
        const nlohmann::json pr = peer_row(peer, hkv, B, T);
        if (pr.is_object()) {
          r["peer"] = pr;
          double best_peer = 0;
          for (const char* key : {"flash_ms", "cudnn_ms"})
            if (pr.contains(key) && pr[key].is_number()) {
              const double ms = pr[key].get<double>();
              if (ms > 0 && (best_peer == 0 || ms < best_peer)) best_peer = ms;
            }
          if (best_peer > 0) r["best_peer_dense_ms"] = best_peer;
        }
        if (r.contains("moba_ms")) {
          double best = r.value("dense_ms", 0.0);
          const double bp = r.value("best_peer_dense_ms", 0.0);
          if (bp > 0 && (best == 0 || bp < best)) best = bp;
          if (best > 0) r["speedup_vs_best_dense"] = best / r["moba_ms"].get<double>();
        }
        if (r.contains("skipped")) {
          std::printf("| %lld | %lld | %lld | skipped: %s | | | | | | |\n", static_cast<long long>(hkv),
                      static_cast<long long>(B), static_cast<long long>(T),
                      r["skipped"].get<std::string>().c_str());
        } else {
          std::printf("| %lld | %lld | %lld | %s | %s | %s | %s | %s | %s | %s |\n",
                      static_cast<long long>(hkv), static_cast<long long>(B),
                      static_cast<long long>(T), fmt(r, "dense_ms", "%.4f").c_str(),
                      fmt(r, "dense_gbps", "%.0f").c_str(), fmt(r, "moba_ms", "%.4f").c_str(),
                      fmt(r, "moba_gbps", "%.0f").c_str(),
                      fmt(r, "speedup_vs_our_dense", "%.1fx").c_str(),
                      fmt(r, "best_peer_dense_ms", "%.4f").c_str(),
                      fmt(r, "speedup_vs_best_dense", "%.1fx").c_str());
        }
        std::fflush(stdout);
        rows.push_back(r);
      }
  if (!o.json_path.empty())
    write_json_file(o.json_path, {{"device", cuda_device_name()}, {"dtype", "bf16"},
                                  {"heads", o.heads}, {"head_dim", o.head_dim},
                                  {"block_size", o.block_size}, {"top_k", o.top_k},
                                  {"repeats", o.repeats}, {"warmup", o.warmup}, {"rows", rows}});
}

}  // namespace

void add_bench_decode(CLI::App* bench) {
  static BenchDecodeOptions o;  // defaults live here, CLI11 prints them in --help
  CLI::App* cmd = bench->add_subcommand(
      "decode", "Time one decode step of attention on the GPU: MoBA vs dense, random bf16 caches");
  cmd->add_option("--context,-T", o.contexts, "Cache lengths (tokens per sequence)")
      ->capture_default_str();
  cmd->add_option("--batch,-B", o.batches, "Batch sizes")->capture_default_str();
  cmd->add_option("--kv-heads", o.kv_heads, "Key/value head counts Hkv")->capture_default_str();
  add_moba_shape_options(cmd, o.heads, o.head_dim, "Head dim D (64 or 128)", o.block_size,
                         o.top_k);
  cmd->add_option("--warmup", o.warmup, "Untimed calls before timing")->capture_default_str();
  add_bench_run_options(cmd, o.repeats, "Timed repeats (median reported)", o.seed,
                        "Random seed of the caches", o.json_path);
  cmd->add_option("--peer", o.peer_path,
                  "JSON of bench/decode_peers.py (same shapes): adds the best dense decode");
  cmd->add_flag("--skip-dense", o.skip_dense, "Time MoBA only");
  cmd->callback([] { run_bench_decode(o); });
}

}  // namespace moba::cli
