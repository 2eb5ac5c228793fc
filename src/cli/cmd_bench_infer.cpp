// moba bench infer: the whole model at inference on the GPU (model/cuda/decoder_cuda.h), with
// random weights and tokens: prefill time of one long prompt, and decode tokens/s at a given
// context and batch, MoBA against full attention in the same call. What `moba generate`
// runs per token, without the sampler and the tokenizer.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "cli/bench_model.h"
#include "cli/commands.h"
#include "cli/json_file.h"
#include "core/error.h"
#include "core/timing.h"
#include "infer/plan.h"
#include "model/config.h"
#include "model/params.h"
#ifdef MOBA_WITH_CUDA
#include <cuda_runtime.h>

#include "attention/cuda/attention_cuda.h"
#include "core/cuda_check.cuh"
#include "model/cuda/decoder_cuda.h"
#endif

namespace moba::cli {
namespace {

struct BenchInferOptions {
  std::vector<std::string> attention = {"full", "moba"};
  std::vector<int64_t> prefill = {131072};          // prompt lengths timed (batch 1)
  std::vector<int64_t> contexts = {32768, 131072};  // decode contexts
  std::vector<int64_t> batches = {1, 16};
  BenchModelShape m;  // the decoder
  int steps = 32, warmup = 4, repeats = 3;
  bool phases = false;  // one more prefill with per-phase CUDA events
  uint64_t seed = 1;
  std::string json_path;
};

#ifdef MOBA_WITH_CUDA
std::vector<std::vector<int32_t>> random_prompts(int64_t B, int64_t T, int64_t V, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(V - 1));
  std::vector<std::vector<int32_t>> p(static_cast<size_t>(B), std::vector<int32_t>(T));
  for (auto& s : p)
    for (int32_t& t : s) t = dist(gen);
  return p;
}

double median(std::vector<double> x) {
  std::sort(x.begin(), x.end());
  return x[x.size() / 2];
}

// One more prefill with a CUDA event after every phase (the decoder's layers and the
// attention launchers mark them): each phase's time summed over the layers, printed as a
// table in the order of first appearance. The events cost a few microseconds each, so the
// total comes out slightly above the timed prefills.
nlohmann::json prefill_phases(model::cuda::DecoderCuda& dec,
                              const std::vector<std::vector<int32_t>>& prompts,
                              const std::string& attn, int64_t T) {
  attn::cuda::enable_phase_timing(true);
  dec.prefill(prompts);
  const auto marks = attn::cuda::take_phase_times();
  attn::cuda::enable_phase_timing(false);
  std::vector<std::pair<std::string, double>> sum;
  double total = 0;
  for (const auto& [name, ms] : marks) {
    auto it = std::find_if(sum.begin(), sum.end(), [&](const auto& e) { return e.first == name; });
    if (it == sum.end()) sum.emplace_back(name, ms);
    else it->second += ms;
    total += ms;
  }
  std::printf("\nprefill phases, %s, T %lld (summed over the layers):\n\n| phase | ms | share |\n"
              "|---|---|---|\n",
              attn.c_str(), static_cast<long long>(T));
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [name, ms] : sum) {
    std::printf("| %s | %.2f | %.1f%% |\n", name.c_str(), ms, 100.0 * ms / total);
    j[name] = ms;
  }
  std::printf("| **total** | %.2f | |\n\n", total);
  std::fflush(stdout);
  return j;
}

void run_bench_infer(const BenchInferOptions& o) {
  MOBA_CHECK(o.steps >= 1 && o.warmup >= 0 && o.repeats >= 1,
             "--steps and --repeats must be >= 1, --warmup >= 0");
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  nlohmann::json prefill_rows = nlohmann::json::array(), decode_rows = nlohmann::json::array();
  std::printf("# moba bench infer on %s: L %lld, C %lld, Hq %lld, V %lld, S %lld, K %lld\n\n",
              prop.name, static_cast<long long>(o.m.layers), static_cast<long long>(o.m.width),
              static_cast<long long>(o.m.heads), static_cast<long long>(o.m.vocab),
              static_cast<long long>(o.m.block_size), static_cast<long long>(o.m.top_k));
  std::printf("| phase | attention | T | batch | ms | tokens/s |\n|---|---|---|---|---|---|\n");
  for (const std::string& attn : o.attention) {
    for (int64_t T : o.prefill) {
      const model::ModelConfig cfg = o.m.config(T, attn);
      std::vector<float> P(model::make_param_layout(cfg).total);
      model::init_params<float>(model::make_param_layout(cfg), o.seed, P);
      model::cuda::DecoderCuda dec(cfg, P, 1, T, true);
      const auto prompts = random_prompts(1, T, o.m.vocab, o.seed + 1);
      dec.prefill(prompts);  // warm-up: cuBLASLt heuristics, allocations
      std::vector<double> ms;
      for (int r = 0; r < o.repeats; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        dec.prefill(prompts);
        ms.push_back(1e3 * seconds_since(t0));
      }
      const double m = median(ms);
      std::printf("| prefill | %s | %lld | 1 | %.1f | %.0f |\n", attn.c_str(),
                  static_cast<long long>(T), m, static_cast<double>(T) / (m * 1e-3));
      std::fflush(stdout);
      nlohmann::json row = {{"attention", attn}, {"T", T}, {"ms", m}, {"ms_all", ms},
                            {"device_gb", static_cast<double>(dec.device_bytes()) / 1e9}};
      if (o.phases) row["phases_ms"] = prefill_phases(dec, prompts, attn, T);
      prefill_rows.push_back(row);
    }
    for (int64_t T : o.contexts)
      for (int64_t B : o.batches) {
        const int64_t cap = T + o.warmup + o.steps;
        const model::ModelConfig cfg = o.m.config(cap, attn);
        std::vector<float> P(model::make_param_layout(cfg).total);
        model::init_params<float>(model::make_param_layout(cfg), o.seed, P);
        size_t free0 = 0, free1 = 0, total = 0;
        CUDA_CHECK(cudaDeviceSynchronize());
        CUDA_CHECK(cudaMemGetInfo(&free0, &total));
        model::cuda::DecoderCuda dec(cfg, P, B, cap, true);
        dec.prefill(random_prompts(B, T, o.m.vocab, o.seed + 2));
        const auto next = random_prompts(1, B * (o.warmup + o.steps), o.m.vocab, o.seed + 3)[0];
        for (int i = 0; i < o.warmup; ++i)
          dec.decode(std::span<const int32_t>(next.data() + i * B, static_cast<size_t>(B)));
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = o.warmup; i < o.warmup + o.steps; ++i)
          dec.decode(std::span<const int32_t>(next.data() + i * B, static_cast<size_t>(B)));
        const double s = seconds_since(t0);
        CUDA_CHECK(cudaMemGetInfo(&free1, &total));
        // The planner's figure (infer/plan.h, `moba generate --plan`) against the device
        // memory the decoder took (what stays allocated after a prefill of T and the steps).
        infer::PlanInput pin;
        pin.model = cfg;
        pin.device = "cuda";
        pin.batch = B;
        pin.context = cap;
        pin.prompt = T;
        const double plan_gb = infer::plan_inference(pin).total_bytes / 1e9;
        const double used_gb = static_cast<double>(free0 - free1) / 1e9;
        const double ms_step = 1e3 * s / o.steps;
        const double tps = static_cast<double>(B * o.steps) / s;
        std::printf("| decode | %s | %lld | %lld | %.3f | %.0f |\n", attn.c_str(),
                    static_cast<long long>(T), static_cast<long long>(B), ms_step, tps);
        std::fflush(stdout);
        decode_rows.push_back({{"attention", attn}, {"T", T}, {"batch", B}, {"ms_per_step", ms_step},
                               {"tokens_per_s", tps},
                               {"cache_gb", static_cast<double>(dec.cache_bytes()) / 1e9},
                               {"device_gb", static_cast<double>(dec.device_bytes()) / 1e9},
                               {"measured_gb", used_gb}, {"plan_gb", plan_gb}});
        std::fprintf(stderr, "memory: planned %.3f GB, measured %.3f GB (%+.1f%%)\n", plan_gb,
                     used_gb, 100.0 * (plan_gb - used_gb) / used_gb);
      }
  }
  // MoBA against full, per row, where both ran.
  std::printf("\n| what | T | batch | MoBA speed-up over full |\n|---|---|---|---|\n");
  for (const auto& m : prefill_rows)
    for (const auto& f : prefill_rows)
      if (m["attention"] == "moba" && f["attention"] == "full" && m["T"] == f["T"])
        std::printf("| prefill | %lld | 1 | %.2fx |\n", m["T"].get<long long>(),
                    f["ms"].get<double>() / m["ms"].get<double>());
  for (const auto& m : decode_rows)
    for (const auto& f : decode_rows)
      if (m["attention"] == "moba" && f["attention"] == "full" && m["T"] == f["T"] &&
          m["batch"] == f["batch"])
        std::printf("| decode | %lld | %lld | %.2fx |\n", m["T"].get<long long>(),
                    m["batch"].get<long long>(),
                    m["tokens_per_s"].get<double>() / f["tokens_per_s"].get<double>());
  if (!o.json_path.empty())
    write_json_file(o.json_path, {{"device", prop.name},
                                  {"model", o.m.json()},
                                  {"steps", o.steps}, {"warmup", o.warmup},
                                  {"prefill", prefill_rows}, {"decode", decode_rows}});
}
#else
void run_bench_infer(const BenchInferOptions&) {
  throw Error("moba bench infer needs a build with the CUDA kernels (this one has none)");
}
#endif

}  // namespace

void add_bench_infer(CLI::App* bench) {
  static BenchInferOptions o;
  CLI::App* cmd = bench->add_subcommand(
      "infer", "Whole-model inference on the GPU: prefill time and decode tokens/s, MoBA vs full");
  cmd->add_option("--attention", o.attention, "full and/or moba")->capture_default_str();
  cmd->add_option("--prefill", o.prefill, "Prompt lengths whose prefill is timed (batch 1)")
      ->capture_default_str();
  cmd->add_option("--context,-T", o.contexts, "Context lengths at which decode is timed")
      ->capture_default_str();
  cmd->add_option("--batch,-B", o.batches, "Batch sizes of the decode")->capture_default_str();
  o.m.add_options(cmd);
  cmd->add_option("--steps", o.steps, "Timed decode steps")->capture_default_str();
  cmd->add_option("--warmup", o.warmup, "Untimed decode steps first")->capture_default_str();
  cmd->add_flag("--phases", o.phases,
                "After the timed prefills, one more with CUDA events between phases: a table "
                "of where the prefill's time goes");
  add_bench_run_options(cmd, o.repeats, "Timed prefills (median reported)", o.seed,
                        "Seed of weights and tokens", o.json_path);
  cmd->callback([] { run_bench_infer(o); });
}

}  // namespace moba::cli
